//! Reading and changing one path of a stored tree without loading the
//! rest: the directories along the path are read, the entry is set or
//! removed, and those directories alone are written again (every other
//! subtree keeps its id). Volumes' outside access (`get`, `put`,
//! `rm-file`, `ls-files`) stands on it.
//!
//! An entry involving hard links (an inode with several names, or a
//! further name) cannot be changed in place without the rest of its link
//! set: such an edit loads the tree whole and stores it again, which puts
//! first names and link counts right.

use cas::{ChunkId, Store, Writer};

use crate::memtree::{show, split_path, store_entries, MemTree, TreeReader};
use crate::tree::{Attrs, DirLayout, DirNode, Entry, Timestamp};
use crate::{Error, Result};

/// The entry at `path` in tree `root` (`None`: nothing there; the root
/// itself, the empty path, is its directory entry).
pub fn lookup_path(store: &Store, root: ChunkId, path: &[u8]) -> Result<Option<Entry>> {
    let parts = split_path(path).map_err(|reason| bad(path, reason))?;
    let reader = TreeReader::new(store);
    let mut at = Entry::Dir(root);
    for part in parts {
        let Entry::Dir(id) = at else {
            return Ok(None);
        };
        let dir = reader.dir(id)?;
        let found = reader
            .entries(&dir)?
            .into_iter()
            .find(|(name, _)| name.as_slice() == part);
        match found {
            Some((_, entry)) => at = entry,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

fn bad(path: &[u8], reason: impl Into<String>) -> Error {
    Error::BadPath {
        path: show(path),
        reason: reason.into(),
    }
}

/// Tree `root` with `path` set to `entry` (`None`: removed; removing what
/// is not there is an error). Missing parent directories are made with
/// `dir_attrs`; a directory along the path that changes gets `time` as
/// its modification and change time. `entry` may not be a hard link.
pub fn set_path(
    store: &Store,
    writer: &Writer,
    root: ChunkId,
    path: &[u8],
    entry: Option<Entry>,
    dir_attrs: &Attrs,
    time: Timestamp,
) -> Result<ChunkId> {
    let parts = split_path(path).map_err(|reason| bad(path, reason))?;
    if parts.is_empty() {
        return Err(bad(path, "the root cannot be set or removed"));
    }
    if matches!(entry, Some(Entry::HardLink { .. })) {
        return Err(bad(path, "a hard link cannot be set by path"));
    }
    let mut edit = Edit {
        reader: TreeReader::new(store),
        writer,
        dir_attrs,
        time,
        links: false,
    };
    let tree = edit.set_in(Some(root), &parts, 0, entry)?;
    match edit.links {
        true => Ok(MemTree::load(store, tree)?.store(writer)?),
        false => Ok(tree),
    }
}

struct Edit<'a> {
    reader: TreeReader<'a>,
    writer: &'a Writer,
    dir_attrs: &'a Attrs,
    time: Timestamp,
    /// The replaced entry involved hard links: normalize afterwards.
    links: bool,
}

impl Edit<'_> {
    fn set_in(
        &mut self,
        dir: Option<ChunkId>,
        parts: &[&[u8]],
        depth: usize,
        entry: Option<Entry>,
    ) -> Result<ChunkId> {
        let here = parts[..depth].join(&b'/');
        let node = match dir {
            Some(id) => self.reader.dir(id)?,
            None => DirNode {
                attrs: self.dir_attrs.clone(),
                entry_count: 0,
                layout: DirLayout::Inline(Vec::new()),
            },
        };
        let mut entries = self.reader.entries(&node)?;
        let name = parts[depth];
        let at = entries.binary_search_by(|(n, _)| n.as_slice().cmp(name));
        if depth + 1 == parts.len() {
            let old = at.ok().map(|i| &entries[i].1);
            if let Some(Entry::HardLink { .. }) = old {
                self.links = true;
            }
            if let Some(Entry::Inode(inode)) = old {
                self.links |= inode.nlink > 1;
            }
            match (at, entry) {
                (Ok(i), Some(e)) => entries[i].1 = e,
                (Err(i), Some(e)) => entries.insert(i, (name.to_vec(), e)),
                (Ok(i), None) => {
                    entries.remove(i);
                }
                (Err(_), None) => {
                    let path = parts.join(&b'/');
                    return Err(bad(&path, "nothing there to remove"));
                }
            }
        } else {
            let child = match at {
                Ok(i) => match &entries[i].1 {
                    Entry::Dir(id) => Some(*id),
                    _ => {
                        let path = parts[..=depth].join(&b'/');
                        return Err(bad(&path, "not a directory"));
                    }
                },
                Err(_) if entry.is_none() => {
                    let path = parts.join(&b'/');
                    return Err(bad(&path, "nothing there to remove"));
                }
                Err(_) => None,
            };
            let id = self.set_in(child, parts, depth + 1, entry)?;
            match at {
                Ok(i) => entries[i].1 = Entry::Dir(id),
                Err(i) => entries.insert(i, (name.to_vec(), Entry::Dir(id))),
            }
        }
        let mut attrs = node.attrs;
        attrs.mtime = self.time;
        attrs.ctime = self.time;
        store_entries(self.writer, attrs, entries, &here)
    }
}

/// A new regular file's entry: `blob` of `size` bytes with `attrs`.
pub fn file_entry(size: u64, blob: Option<ChunkId>, attrs: Attrs) -> Entry {
    Entry::Inode(crate::tree::Inode {
        attrs,
        nlink: 1,
        kind: crate::tree::InodeKind::File { size, blob },
    })
}
