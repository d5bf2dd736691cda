//! Three-way merge of trees: the changes going from `base` to `ours`
//! applied on top of `theirs`, by comparing ids, so that a merge reads only
//! the directories both sides changed and writes only their new nodes.
//!
//! Volumes commit with it: `base` is the head a session started from (or
//! last committed or reloaded to), `ours` is the session's capture and
//! `theirs` the volume's head now.
//!
//! ## The rules (deterministic; every conflict is listed)
//! - A name changed on one side only takes that side's entry (a deletion
//!   included); changed the same way on both, that entry. A file whose
//!   access time alone differs is unchanged (it was read, not written).
//! - A directory changed on both sides is merged entry by entry. Its
//!   attributes are merged field by field: a field changed on one side
//!   takes that side's value; changed on both, `theirs` (the head,
//!   committed first) — except the times, which take the later one.
//! - Anything else changed differently on both sides is a **conflict**:
//!   - both kept something (two versions of a file, a file against a
//!     directory, a symlink against a file): `theirs` keeps the name, and
//!     `ours` is written beside it as a *conflict copy* named
//!     `STEM.conflict-TAG.EXT` (`TAG` says when and by whom, given by the
//!     caller; `-2`, `-3`… are added if that name is taken);
//!   - one side deleted what the other changed: the changed version is
//!     kept under its name, whichever side it came from — a change is
//!     never lost to a concurrent delete — and the conflict is listed.
//!
//! Hard links name their target by path. A merge that takes entries
//! involving hard links from different sides loads the merged tree whole,
//! which checks that every link still reaches its target, and stores it
//! again, which puts first names and link counts right (such a merge costs
//! the whole tree); where a link lost its target, the merge fails rather
//! than write a broken tree.

use std::collections::BTreeMap;

use cas::{ChunkId, Store, Writer};
use serde::{Deserialize, Serialize};

use crate::memtree::{join, store_entries, MemTree, TreeReader};
use crate::tree::{Attrs, Entry, MAX_NAME_LEN};
use crate::{Error, Result};

/// What kind of conflict a path had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictKind {
    /// Both sides changed it differently (two versions of a file, a file
    /// against a directory, …): `theirs` kept the name, `ours` is the copy.
    BothChanged,
    /// `ours` changed it, `theirs` deleted it: `ours` is kept.
    ChangedDeleted,
    /// `ours` deleted it, `theirs` changed it: `theirs` is kept.
    DeletedChanged,
}

/// One conflict of a merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The path (from the root, `/`-separated, lossy UTF-8).
    pub path: String,
    pub kind: ConflictKind,
    /// Where `ours` was written instead (for [`ConflictKind::BothChanged`]).
    pub copy: Option<String>,
}

/// What a merge produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The merged tree.
    pub tree: ChunkId,
    /// Every conflict, in path order.
    pub conflicts: Vec<Conflict>,
    /// Directories read and merged entry by entry (both sides changed).
    pub dirs_merged: u64,
}

/// Merges the change from `base` to `ours` into `theirs` (see the module
/// documentation for the rules); `tag` names conflict copies (letters,
/// digits, `-` and `_`; at most 64 bytes).
pub fn merge_trees(
    store: &Store,
    writer: &Writer,
    base: ChunkId,
    ours: ChunkId,
    theirs: ChunkId,
    tag: &str,
) -> Result<Merged> {
    if tag.is_empty()
        || tag.len() > 64
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::BadPath {
            path: tag.into(),
            reason: "a conflict tag is 1-64 letters, digits, '-' or '_'".into(),
        });
    }
    let mut merge = Merge {
        reader: TreeReader::new(store),
        writer,
        tag,
        conflicts: Vec::new(),
        dirs_merged: 0,
        links_mixed: false,
    };
    let tree = match Merge::trivial(Some(base), ours, theirs) {
        Some(id) => id,
        None => merge.dirs(b"", Some(base), ours, theirs)?,
    };
    let tree = match merge.links_mixed {
        // Every hard link must still reach an inode (loading checks), and
        // storing again puts each inode's first name and link count right.
        true => MemTree::load(store, tree)?.store(writer)?,
        false => tree,
    };
    let mut conflicts = merge.conflicts;
    conflicts.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Merged {
        tree,
        conflicts,
        dirs_merged: merge.dirs_merged,
    })
}

struct Merge<'a> {
    reader: TreeReader<'a>,
    writer: &'a Writer,
    tag: &'a str,
    conflicts: Vec<Conflict>,
    dirs_merged: u64,
    /// Entries involving hard links were taken from different sides.
    links_mixed: bool,
}

fn show(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Whether two entries are the same change: equal but for the access
/// time (reading a file is not a change to merge, and must not make a
/// concurrent edit of it a conflict).
fn same(a: &Option<Entry>, b: &Option<Entry>) -> bool {
    match (a, b) {
        (Some(Entry::Inode(x)), Some(Entry::Inode(y))) => {
            x.kind == y.kind
                && x.nlink == y.nlink
                && Attrs {
                    atime: y.attrs.atime,
                    ..x.attrs.clone()
                } == y.attrs
        }
        _ => a == b,
    }
}

/// `ours`'s version of a conflicting entry, to be written beside it.
struct Copy {
    name: Vec<u8>,
    entry: Entry,
    /// Its conflict's index in `Merge::conflicts`.
    conflict: usize,
}

fn involves_links(entry: &Option<Entry>) -> bool {
    match entry {
        Some(Entry::HardLink { .. }) => true,
        Some(Entry::Inode(inode)) => inode.nlink > 1,
        _ => false,
    }
}

/// Field by field: one side's change wins; both changed, `theirs`, but
/// the later of each time.
fn merge_attrs(base: &Attrs, ours: &Attrs, theirs: &Attrs) -> Attrs {
    fn pick<T: PartialEq + Clone>(base: &T, ours: &T, theirs: &T) -> T {
        match ours == base {
            true => theirs.clone(),
            false if theirs == base => ours.clone(),
            false => theirs.clone(),
        }
    }
    Attrs {
        mode: pick(&base.mode, &ours.mode, &theirs.mode),
        uid: pick(&base.uid, &ours.uid, &theirs.uid),
        gid: pick(&base.gid, &ours.gid, &theirs.gid),
        atime: ours.atime.max(theirs.atime),
        mtime: ours.mtime.max(theirs.mtime),
        ctime: ours.ctime.max(theirs.ctime),
        xattrs: pick(&base.xattrs, &ours.xattrs, &theirs.xattrs),
    }
}

impl Merge<'_> {
    /// The result without reading anything, where ids decide it.
    fn trivial(base: Option<ChunkId>, ours: ChunkId, theirs: ChunkId) -> Option<ChunkId> {
        if ours == theirs || base == Some(ours) {
            Some(theirs)
        } else if base == Some(theirs) {
            Some(ours)
        } else {
            None
        }
    }

    /// Merges directories both sides changed (`base` absent: both added
    /// one at this path).
    fn dirs(
        &mut self,
        path: &[u8],
        base: Option<ChunkId>,
        ours: ChunkId,
        theirs: ChunkId,
    ) -> Result<ChunkId> {
        self.dirs_merged += 1;
        let (b, o, t) = (
            match base {
                Some(id) => Some(self.reader.dir(id)?),
                None => None,
            },
            self.reader.dir(ours)?,
            self.reader.dir(theirs)?,
        );
        let attrs = match &b {
            Some(b) => merge_attrs(&b.attrs, &o.attrs, &t.attrs),
            None => merge_attrs(&t.attrs, &o.attrs, &t.attrs),
        };
        let mut be: BTreeMap<Vec<u8>, Entry> = match &b {
            Some(b) => self.reader.entries(b)?.into_iter().collect(),
            None => BTreeMap::new(),
        };
        let mut oe: BTreeMap<Vec<u8>, Entry> = self.reader.entries(&o)?.into_iter().collect();
        let mut te: BTreeMap<Vec<u8>, Entry> = self.reader.entries(&t)?.into_iter().collect();
        let mut names: Vec<Vec<u8>> = be
            .keys()
            .chain(oe.keys())
            .chain(te.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let mut out: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut copies: Vec<Copy> = Vec::new();
        for name in names {
            let (be, oe, te) = (be.remove(&name), oe.remove(&name), te.remove(&name));
            if let Some(entry) = self.entry(path, &name, be, oe, te, &mut copies)? {
                out.insert(name, entry);
            }
        }
        // Conflict copies go where no entry is, once every entry is known.
        for copy in copies {
            let mut unique = copy.name.clone();
            let mut n = 2;
            while out.contains_key(&unique) {
                unique = numbered(&copy.name, n);
                n += 1;
            }
            self.conflicts[copy.conflict].copy = Some(show(&join(path, &unique)));
            out.insert(unique, copy.entry);
        }
        store_entries(self.writer, attrs, out.into_iter().collect(), path)
    }

    /// The merged entry for `name` in directory `dir` (`None`: no entry).
    fn entry(
        &mut self,
        dir: &[u8],
        name: &[u8],
        base: Option<Entry>,
        ours: Option<Entry>,
        theirs: Option<Entry>,
        copies: &mut Vec<Copy>,
    ) -> Result<Option<Entry>> {
        let path = &join(dir, name);
        if same(&ours, &theirs) || same(&ours, &base) {
            if ours != theirs && (involves_links(&ours) || involves_links(&theirs)) {
                self.links_mixed = true;
            }
            return Ok(theirs);
        }
        if same(&theirs, &base) {
            if involves_links(&ours) || involves_links(&theirs) {
                self.links_mixed = true;
            }
            return Ok(ours);
        }
        if involves_links(&ours) || involves_links(&theirs) || involves_links(&base) {
            self.links_mixed = true;
        }
        match (base, ours, theirs) {
            (b, Some(Entry::Dir(o)), Some(Entry::Dir(t))) => {
                let b = match b {
                    Some(Entry::Dir(b)) => Some(b),
                    _ => None,
                };
                let id = match Merge::trivial(b, o, t) {
                    Some(id) => id,
                    None => self.dirs(path, b, o, t)?,
                };
                Ok(Some(Entry::Dir(id)))
            }
            (_, Some(o), None) => {
                self.conflicts.push(Conflict {
                    path: show(path),
                    kind: ConflictKind::ChangedDeleted,
                    copy: None,
                });
                Ok(Some(o))
            }
            (_, None, Some(t)) => {
                self.conflicts.push(Conflict {
                    path: show(path),
                    kind: ConflictKind::DeletedChanged,
                    copy: None,
                });
                Ok(Some(t))
            }
            (_, Some(o), Some(t)) => {
                copies.push(Copy {
                    name: conflict_name(name, self.tag),
                    entry: o,
                    conflict: self.conflicts.len(),
                });
                self.conflicts.push(Conflict {
                    path: show(path),
                    kind: ConflictKind::BothChanged,
                    copy: None, // set once its name is known to be free
                });
                Ok(Some(t))
            }
            // Both deleted it: caught by `ours == theirs` above.
            (_, None, None) => Ok(None),
        }
    }
}

/// `STEM.conflict-TAG.EXT` (the extension kept so that the copy opens
/// like the original), within the name length limit.
fn conflict_name(name: &[u8], tag: &str) -> Vec<u8> {
    let dot = name.iter().rposition(|&b| b == b'.').filter(|&i| i > 0);
    let (stem, ext) = match dot {
        Some(i) if name.len() - i <= 16 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let marker = format!(".conflict-{tag}");
    let room = MAX_NAME_LEN.saturating_sub(marker.len() + ext.len() + 4);
    let mut out = stem[..stem.len().min(room)].to_vec();
    out.extend_from_slice(marker.as_bytes());
    out.extend_from_slice(ext);
    out
}

/// A conflict copy's name with `-N` before its extension.
fn numbered(copy: &[u8], n: u32) -> Vec<u8> {
    let marker = b".conflict-";
    let at = copy
        .windows(marker.len())
        .rposition(|w| w == marker)
        .unwrap_or(0);
    let dot = copy[at + 1..]
        .iter()
        .position(|&b| b == b'.')
        .map(|i| at + 1 + i);
    let mut out = match dot {
        Some(d) => copy[..d].to_vec(),
        None => copy.to_vec(),
    };
    out.extend_from_slice(format!("-{n}").as_bytes());
    if let Some(d) = dot {
        out.extend_from_slice(&copy[d..]);
    }
    out
}
