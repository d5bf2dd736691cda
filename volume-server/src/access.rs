//! Access from outside the sandboxes (`get`, `put`, `ls-files`,
//! `rm-file`): reading a path of a volume's head, and changing one path
//! as a small commit of its own. A change reads and writes only the
//! directories along its path; when the head moves meanwhile it is made
//! again on the newer head (a path written from outside takes the last
//! writer's bytes; every other path keeps what the other commit made).

use std::io::{Read, Write};

use cas::Chunking;
use layerfs::edit::{file_entry, lookup_path, set_path};
use layerfs::memtree::implicit_dir_attrs;
use layerfs::tree::{Attrs, Entry, InodeKind, Timestamp};
use layerfs::TreeReader;
use serde::{Deserialize, Serialize};

use crate::catalog::{CommitKind, Head, Volumes};
use crate::{Error, Result};

/// One entry of a listed directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// `dir`, `file`, `symlink`, `hardlink` or `other`.
    pub kind: String,
    /// A file's size; 0 for others.
    pub size: u64,
}

/// A file of a volume's head, found by [`Volumes::resolve_file`]; its
/// bytes are pinned (GC keeps them) while this lives, however the head
/// moves meanwhile.
pub struct ResolvedFile {
    path: String,
    /// Its size in bytes.
    pub size: u64,
    blob: Option<cas::ChunkId>,
    _pin: cas::Writer,
}

const RETRIES: usize = 1000;

impl Volumes {
    /// Writes the file at `path` of volume `name`'s head to `out`; returns
    /// its size.
    pub fn read_file(&self, name: &str, path: &str, out: &mut dyn Write) -> Result<u64> {
        let file = self.resolve_file(name, path)?;
        self.copy_file(&file, out)
    }

    /// Finds the file at `path` of volume `name`'s head without reading
    /// it: a missing path, a directory or a bad path is an error here,
    /// before any byte is sent.
    pub fn resolve_file(&self, name: &str, path: &str) -> Result<ResolvedFile> {
        // A GC that reclaimed the file between reading the head and
        // pinning it means the head moved: read the newer one.
        let mut tries = 0;
        loop {
            match self.resolve_file_once(name, path) {
                Err(Error::Store(cas::Error::ChunkNotFound { .. })) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    fn resolve_file_once(&self, name: &str, path: &str) -> Result<ResolvedFile> {
        let head = self.head(name)?;
        let pin = self
            .store()
            .writer(&format!("reading {path} of volume {name}"));
        let mut at = path.as_bytes().to_vec();
        // A hard link names its target's path; a chain of them ends at a
        // file in a well-formed tree, and a loop is refused.
        for _ in 0..64 {
            match lookup_path(self.store(), head.commit.tree, &at)? {
                Some(Entry::Inode(inode)) => match inode.kind {
                    InodeKind::File { size, blob } => {
                        if let Some(id) = &blob {
                            pin.pin(id)?;
                        }
                        return Ok(ResolvedFile {
                            path: path.into(),
                            size,
                            blob,
                            _pin: pin,
                        });
                    }
                    _ => return Err(Error::NotAFile(path.into())),
                },
                Some(Entry::HardLink { target }) => at = target,
                Some(Entry::Dir(_)) => return Err(Error::NotAFile(path.into())),
                None => return Err(Error::NoSuchPath(path.into())),
            }
        }
        Err(Error::NotAFile(path.into()))
    }

    /// Writes a resolved file's bytes to `out`; returns its size.
    pub fn copy_file(&self, file: &ResolvedFile, out: &mut dyn Write) -> Result<u64> {
        if let Some(id) = file.blob {
            self.store()
                .blob(&id)?
                .copy_to(out)
                .map_err(|e| Error::Session(format!("writing {}: {e}", file.path)))?;
        }
        Ok(file.size)
    }

    /// The entries of directory `path` (empty: the root) of volume
    /// `name`'s head, in name order.
    pub fn list_files(&self, name: &str, path: &str) -> Result<Vec<FileEntry>> {
        let head = self.head(name)?;
        let Some(Entry::Dir(id)) = lookup_path(self.store(), head.commit.tree, path.as_bytes())?
        else {
            return Err(Error::NoSuchPath(path.into()));
        };
        let reader = TreeReader::new(self.store());
        let dir = reader.dir(id)?;
        Ok(reader
            .entries(&dir)?
            .into_iter()
            .map(|(n, e)| {
                let (kind, size) = match e {
                    Entry::Dir(_) => ("dir", 0),
                    Entry::HardLink { .. } => ("hardlink", 0),
                    Entry::Inode(i) => match i.kind {
                        InodeKind::File { size, .. } => ("file", size),
                        InodeKind::Symlink { .. } => ("symlink", 0),
                        _ => ("other", 0),
                    },
                };
                FileEntry {
                    name: String::from_utf8_lossy(&n).into_owned(),
                    kind: kind.into(),
                    size,
                }
            })
            .collect())
    }

    /// Writes `source` as the file at `path` of volume `name` (parents
    /// made as needed), as a commit of its own; returns the new head.
    pub fn put_file(
        &self,
        name: &str,
        path: &str,
        source: &mut dyn Read,
        mode: u32,
        author: &str,
    ) -> Result<Head> {
        self.head(name)?;
        let writer = self.store().writer("volume put");
        let blob = writer.write_blob(source, Chunking::ContentDefined)?;
        let t = Timestamp::now();
        let attrs = Attrs {
            mode: mode & 0o7777,
            atime: t,
            mtime: t,
            ctime: t,
            ..Attrs::default()
        };
        let entry = file_entry(blob.len, (blob.len > 0).then_some(blob.id), attrs);
        self.edit(name, path, Some(entry), author)
    }

    /// Removes `path` (a file, or a directory with all it holds) from
    /// volume `name`, as a commit of its own.
    pub fn remove_file(&self, name: &str, path: &str, author: &str) -> Result<Head> {
        self.edit(name, path, None, author)
    }

    fn edit(&self, name: &str, path: &str, entry: Option<Entry>, author: &str) -> Result<Head> {
        let writer = self.store().writer("volume edit");
        let mut dir_attrs = implicit_dir_attrs();
        let t = Timestamp::now();
        (dir_attrs.atime, dir_attrs.mtime, dir_attrs.ctime) = (t, t, t);
        for _ in 0..RETRIES {
            let head = self.head(name)?;
            let tree = match set_path(
                self.store(),
                &writer,
                head.commit.tree,
                path.as_bytes(),
                entry.clone(),
                &dir_attrs,
                t,
            ) {
                Ok(tree) => tree,
                Err(layerfs::Error::BadPath { reason, .. })
                    if reason == "nothing there to remove" =>
                {
                    return Err(Error::NoSuchPath(path.into()))
                }
                Err(e) => return Err(e.into()),
            };
            let record = self.record_for(name, &head, tree, CommitKind::Edit, author)?;
            self.check_room(name, &head, &record)?;
            if let Some(head) = self.advance(&writer, name, &head, tree, record)? {
                return Ok(head);
            }
        }
        Err(Error::Contended(name.into()))
    }
}
