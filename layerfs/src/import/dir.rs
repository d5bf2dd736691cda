//! Importing a directory of the host into a [`MemTree`].
//!
//! Reads without following symlinks, keeps hard links (by device and inode
//! number), extended attributes, devices, fifos and sockets, and times to
//! the nanosecond. Does not cross into other filesystems mounted below the
//! directory (they appear as empty directories), as `tar
//! --one-file-system` does. File contents are stored in parallel.
//!
//! The tree may change while it is read (it may be a sandbox's, and
//! hostile): every directory is opened relative to its parent's open
//! descriptor without following symlinks (`/proc/self/fd/N/NAME` with
//! `O_NOFOLLOW`) and must still be the directory the walk saw; every file
//! is opened without following symlinks and must still be the inode the
//! walk saw. A swapped-in symlink gets an error, never the bytes it
//! points at.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cas::{Chunking, Writer};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::import::ImportLimits;
use crate::memtree::{MemKind, MemNode, MemTree, NodeIndex, MAX_DEPTH};
use crate::tree::{validate_xattrs, Attrs, InodeKind, Timestamp, MAX_PATH_LEN};

/// What a directory import read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirStats {
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub new_bytes: u64,
}

fn io_err<'p>(path: &'p Path, what: &str) -> impl FnOnce(std::io::Error) -> Error + 'p {
    let what = what.to_string();
    move |e| Error::io(format!("{what} {}", path.display()), e)
}

/// Attributes of `meta` and the extended attributes of `path`.
pub fn attrs_of(path: &Path, meta: &fs::Metadata) -> Result<Attrs> {
    let time = |secs: i64, nanos: i64| Timestamp::new(secs, nanos as u32).unwrap_or_default();
    let mut xattrs = BTreeMap::new();
    // Sockets and some special files refuse xattr calls; they have none.
    if let Ok(names) = xattr::list(path) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(path, &name) {
                xattrs.insert(name.as_bytes().to_vec(), value);
            }
        }
    }
    validate_xattrs(&xattrs).map_err(|reason| Error::BadPath {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(Attrs {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        xattrs,
    })
}

/// Opens directory `name` in the directory open as `parent`, not
/// following a symlink; it must be the directory `(dev, ino)`.
fn open_dir_at(
    parent: &File,
    name: &std::ffi::OsStr,
    shown: &Path,
    id: (u64, u64),
) -> Result<File> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(at(parent, name))
        .map_err(io_err(shown, "opening the directory"))?;
    let meta = dir
        .metadata()
        .map_err(io_err(shown, "reading the directory"))?;
    if (meta.dev(), meta.ino()) != id {
        return Err(changed(shown));
    }
    Ok(dir)
}

/// The path that names `name` in the directory open as `dir`, resolved
/// through the descriptor (no symlink on the way can be swapped).
fn at(dir: &File, name: &std::ffi::OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn changed(path: &Path) -> Error {
    Error::BadPath {
        path: path.display().to_string(),
        reason: "changed while it was being imported (replaced, or swapped for a symlink)".into(),
    }
}

/// A directory waiting to be read: its parent's descriptor, its name and
/// identity there, where it goes in the tree and how deep it is.
struct Pending {
    shown: PathBuf,
    parent: Arc<File>,
    name: std::ffi::OsString,
    id: (u64, u64),
    index: NodeIndex,
    depth: usize,
}

/// Reads directory `root` into a new tree. File contents are written with
/// `writer`.
pub fn import_dir(
    root: &Path,
    writer: &Writer,
    limits: &ImportLimits,
) -> Result<(MemTree, DirStats)> {
    let root_dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(root)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) | Some(libc::ELOOP) => Error::BadPath {
                path: root.display().to_string(),
                reason: "not a directory".into(),
            },
            _ => Error::io(format!("opening {}", root.display()), e),
        })?;
    let root_meta = root_dir.metadata().map_err(io_err(root, "reading"))?;
    let mut tree = MemTree::new(attrs_of(root, &root_meta)?);
    let mut stats = DirStats::default();
    let mut hard_links: HashMap<(u64, u64), NodeIndex> = HashMap::new();
    let mut files: Vec<FileToStore> = Vec::new();
    let mut total_bytes = 0u64;
    let device = root_meta.dev();
    let mut stack: Vec<Pending> = Vec::new();
    let mut current = Some((root.to_path_buf(), Arc::new(root_dir), tree.root(), 0usize));

    loop {
        let (dir_path, dir, dir_index, depth) = match current.take() {
            Some(first) => first,
            None => {
                let Some(next) = stack.pop() else { break };
                let dir = open_dir_at(&next.parent, &next.name, &next.shown, next.id)?;
                (next.shown, Arc::new(dir), next.index, next.depth)
            }
        };
        let mut names: Vec<_> = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(io_err(&dir_path, "listing"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(io_err(&dir_path, "listing"))?;
        names.sort();
        for name in names {
            let path = dir_path.join(&name);
            if path.as_os_str().len() > MAX_PATH_LEN + root.as_os_str().len() {
                return Err(Error::BadPath {
                    path: path.display().to_string(),
                    reason: "path too long".into(),
                });
            }
            let here = at(&dir, &name);
            let meta = fs::symlink_metadata(&here).map_err(io_err(&path, "reading"))?;
            stats.entries += 1;
            if stats.entries > limits.max_entries {
                return Err(Error::LimitExceeded {
                    source_name: root.display().to_string(),
                    what: "number of entries".into(),
                    limit: limits.max_entries,
                    hint: "raise --max-entries",
                });
            }
            let file_type = meta.file_type();
            let key = (meta.dev(), meta.ino());
            if !file_type.is_dir() && meta.nlink() > 1 {
                if let Some(&existing) = hard_links.get(&key) {
                    insert_child(&mut tree, dir_index, name.as_bytes(), existing)?;
                    continue;
                }
            }
            let attrs = attrs_of(&here, &meta)?;
            let kind = if file_type.is_dir() {
                MemKind::Dir(BTreeMap::new())
            } else if file_type.is_file() {
                if meta.len() > limits.max_file_bytes {
                    return Err(Error::LimitExceeded {
                        source_name: root.display().to_string(),
                        what: format!("file {} of {} bytes", path.display(), meta.len()),
                        limit: limits.max_file_bytes,
                        hint: "raise --max-file-bytes",
                    });
                }
                total_bytes = total_bytes.saturating_add(meta.len());
                if total_bytes > limits.max_total_bytes {
                    return Err(Error::LimitExceeded {
                        source_name: root.display().to_string(),
                        what: "bytes of files in total".into(),
                        limit: limits.max_total_bytes,
                        hint: "raise --max-bytes",
                    });
                }
                MemKind::Other(InodeKind::File {
                    size: meta.len(),
                    blob: None,
                })
            } else if file_type.is_symlink() {
                let target = fs::read_link(&here).map_err(io_err(&path, "reading the link"))?;
                MemKind::Other(InodeKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                })
            } else if file_type.is_char_device() || file_type.is_block_device() {
                if !limits.allow_devices {
                    return Err(Error::BadPath {
                        path: path.display().to_string(),
                        reason: "device node, and this import does not allow devices".into(),
                    });
                }
                let rdev = meta.rdev();
                MemKind::Other(if file_type.is_char_device() {
                    InodeKind::CharDevice { rdev }
                } else {
                    InodeKind::BlockDevice { rdev }
                })
            } else if file_type.is_fifo() {
                MemKind::Other(InodeKind::Fifo)
            } else {
                MemKind::Other(InodeKind::Socket)
            };
            let is_dir = matches!(kind, MemKind::Dir(_));
            let is_file = matches!(kind, MemKind::Other(InodeKind::File { .. }));
            let index = tree.add_node(MemNode { attrs, kind });
            insert_child(&mut tree, dir_index, name.as_bytes(), index)?;
            if !is_dir && meta.nlink() > 1 {
                hard_links.insert(key, index);
            }
            if is_file {
                files.push(FileToStore {
                    index,
                    path: path.clone(),
                    id: key,
                    size: meta.len(),
                });
            }
            if is_dir && meta.dev() == device {
                if depth + 1 > MAX_DEPTH {
                    return Err(Error::BadPath {
                        path: path.display().to_string(),
                        reason: format!("deeper than {MAX_DEPTH} directories"),
                    });
                }
                stack.push(Pending {
                    shown: path,
                    parent: dir.clone(),
                    name,
                    id: key,
                    index,
                    depth: depth + 1,
                });
            }
        }
    }

    // Contents, in the order a reader walking the tree meets them, so
    // that files read one after another lie side by side in the packs.
    let rank = reading_order(&tree);
    files.sort_by_key(|file| rank.get(file.index).copied().unwrap_or(usize::MAX));
    let stored = store_files(&files, writer, limits.max_file_bytes)?;
    for (index, len, blob, new_bytes) in stored {
        stats.files += 1;
        stats.file_bytes += len;
        stats.new_bytes += new_bytes;
        tree.node_mut(index).kind = MemKind::Other(InodeKind::File { size: len, blob });
    }
    Ok((tree, stats))
}

/// A regular file the walk found, to be stored.
struct FileToStore {
    index: NodeIndex,
    path: PathBuf,
    /// Device and inode number the walk saw.
    id: (u64, u64),
    size: u64,
}

/// What storing one file gave: its node, length, blob and new bytes.
type Stored = (NodeIndex, u64, Option<cas::ChunkId>, u64);

/// Files of at least this size are stored one at a time, their chunks in
/// parallel (the blob writer's batches); smaller ones several at a time.
const LARGE_FILE: u64 = 8 << 20;

/// Each node's position in a depth-first walk of `tree` that lists every
/// directory's entries by name: the order in which `tar`, `cp -r`, `rsync`
/// and the mount's own listings meet them (`usize::MAX` for nodes not
/// reached). A hard-linked file takes its first position.
fn reading_order(tree: &MemTree) -> Vec<usize> {
    let mut rank = Vec::new();
    let mut next = 0usize;
    let mut stack = vec![tree.root()];
    while let Some(index) = stack.pop() {
        if rank.len() <= index {
            rank.resize(index + 1, usize::MAX);
        }
        if rank[index] != usize::MAX {
            continue;
        }
        rank[index] = next;
        next += 1;
        if let MemKind::Dir(children) = &tree.node(index).kind {
            stack.extend(children.values().rev());
        }
    }
    rank
}

/// Stores the contents of `files` in their order: a run of small files is
/// handed out one file at a time, in order, to the pool's threads (so the
/// packs receive them in nearly that order, neighbours at most swapped);
/// a large file is stored alone, its chunks in parallel.
fn store_files(files: &[FileToStore], writer: &Writer, max: u64) -> Result<Vec<Stored>> {
    let mut stored = Vec::with_capacity(files.len());
    let mut rest = files;
    while let Some(first) = rest.first() {
        if first.size >= LARGE_FILE {
            stored.push(store_file(first, writer, max)?);
            rest = &rest[1..];
            continue;
        }
        let run = rest
            .iter()
            .position(|file| file.size >= LARGE_FILE)
            .unwrap_or(rest.len());
        let mut done: Vec<(usize, Stored)> = rest[..run]
            .iter()
            .enumerate()
            .par_bridge()
            .map(|(i, file)| store_file(file, writer, max).map(|s| (i, s)))
            .collect::<Result<_>>()?;
        done.sort_unstable_by_key(|(i, _)| *i);
        stored.extend(done.into_iter().map(|(_, s)| s));
        rest = &rest[run..];
    }
    Ok(stored)
}

/// Stores one file as a blob. The file is opened by its path without
/// following a final symlink, and must be the inode the walk saw (a
/// directory on its path swapped for a symlink leads elsewhere: another
/// inode).
fn store_file(file: &FileToStore, writer: &Writer, max: u64) -> Result<Stored> {
    let path = &file.path;
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => changed(path),
            _ => Error::io(format!("opening {}", path.display()), e),
        })?;
    let meta = handle.metadata().map_err(io_err(path, "reading"))?;
    if (meta.dev(), meta.ino()) != file.id || !meta.is_file() {
        return Err(changed(path));
    }
    let mut blob = writer.blob_writer(Chunking::ContentDefined);
    let len = blob.read_from(&mut handle.take(max + 1))?;
    if len > max {
        return Err(Error::LimitExceeded {
            source_name: path.display().to_string(),
            what: "file bytes (it grew while it was being imported)".into(),
            limit: max,
            hint: "raise --max-file-bytes",
        });
    }
    let info = blob.finish()?;
    Ok((
        file.index,
        len,
        (len > 0).then_some(info.id),
        info.new_bytes,
    ))
}

fn insert_child(tree: &mut MemTree, dir: NodeIndex, name: &[u8], child: NodeIndex) -> Result<()> {
    crate::tree::validate_name(name).map_err(|r| Error::BadPath {
        path: String::from_utf8_lossy(name).into_owned(),
        reason: r.into(),
    })?;
    match &mut tree.node_mut(dir).kind {
        MemKind::Dir(children) => {
            children.insert(name.to_vec(), child);
            Ok(())
        }
        MemKind::Other(_) => Err(Error::BadPath {
            path: String::from_utf8_lossy(name).into_owned(),
            reason: "parent is not a directory".into(),
        }),
    }
}
