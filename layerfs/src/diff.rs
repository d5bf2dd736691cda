//! Differences between two trees, found by comparing ids: identical
//! subtrees are skipped without being read, so the cost follows the
//! difference, not the size of the trees.

use cas::{ChunkId, Store};
use serde::{Deserialize, Serialize};

use crate::memtree::TreeReader;
use crate::tree::{Entry, InodeKind};
use crate::Result;

/// How a path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

/// One differing path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    /// Path from the root (`/`-separated, lossy UTF-8).
    pub path: String,
    pub change: Change,
    /// `dir`, `file`, `symlink`, `hardlink`, `device`, `fifo` or `socket`
    /// (of the new entry; of the old one when deleted).
    pub kind: String,
    /// A file's size (its new size when modified); 0 for others.
    pub size: u64,
}

/// The kind of an entry as a diff names it.
pub(crate) fn kind_of(entry: &Entry) -> &'static str {
    describe(entry).0
}

fn describe(entry: &Entry) -> (&'static str, u64) {
    match entry {
        Entry::Dir(_) => ("dir", 0),
        Entry::HardLink { .. } => ("hardlink", 0),
        Entry::Inode(inode) => match &inode.kind {
            InodeKind::File { size, .. } => ("file", *size),
            InodeKind::Symlink { .. } => ("symlink", 0),
            InodeKind::CharDevice { .. } | InodeKind::BlockDevice { .. } => ("device", 0),
            InodeKind::Fifo => ("fifo", 0),
            InodeKind::Socket => ("socket", 0),
        },
    }
}

/// Paths added, modified or deleted going from tree `a` to tree `b`, in
/// path order. A directory added or deleted is one entry (its contents
/// are not listed); a directory whose attributes changed is `modified`.
pub fn diff_trees(store: &Store, a: ChunkId, b: ChunkId) -> Result<Vec<DiffEntry>> {
    let reader = TreeReader::new(store);
    let mut out = Vec::new();
    diff_dir(&reader, "", a, b, &mut out)?;
    Ok(out)
}

fn diff_dir(
    reader: &TreeReader<'_>,
    path: &str,
    a: ChunkId,
    b: ChunkId,
    out: &mut Vec<DiffEntry>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (da, db) = (reader.dir(a)?, reader.dir(b)?);
    if da.attrs != db.attrs && !path.is_empty() {
        out.push(DiffEntry {
            path: path.to_string(),
            change: Change::Modified,
            kind: "dir".into(),
            size: 0,
        });
    }
    // Pages the two share hold the same entries: only the others are read.
    let (ea, eb) = reader.entries_differing(&da, &db)?;
    for (name, x, y) in side_by_side(&ea, &eb) {
        let child = format!("{path}/{}", String::from_utf8_lossy(name));
        let mut push = |change, entry: &Entry| {
            let (kind, size) = describe(entry);
            out.push(DiffEntry {
                path: child.clone(),
                change,
                kind: kind.into(),
                size,
            });
        };
        match (x, y) {
            (Some(x), None) => push(Change::Deleted, x),
            (None, Some(y)) => push(Change::Added, y),
            (Some(Entry::Dir(x)), Some(Entry::Dir(y))) => diff_dir(reader, &child, *x, *y, out)?,
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) if describe(x).0 == describe(y).0 => push(Change::Modified, y),
            (Some(x), Some(y)) => {
                push(Change::Deleted, x);
                push(Change::Added, y);
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// The names of two sorted entry lists side by side: each name with its
/// entry on either side (at least one).
fn side_by_side<'e>(
    a: &'e [(Vec<u8>, Entry)],
    b: &'e [(Vec<u8>, Entry)],
) -> impl Iterator<Item = (&'e [u8], Option<&'e Entry>, Option<&'e Entry>)> {
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    std::iter::from_fn(move || {
        let (x, y) = match (ia.peek(), ib.peek()) {
            (None, None) => return None,
            (Some((na, _)), Some((nb, _))) if na == nb => (ia.next(), ib.next()),
            (Some((na, _)), Some((nb, _))) if na < nb => (ia.next(), None),
            (Some(_), None) => (ia.next(), None),
            _ => (None, ib.next()),
        };
        let name = x.or(y).map(|(n, _)| n.as_slice())?;
        Some((name, x.map(|(_, e)| e), y.map(|(_, e)| e)))
    })
}

/// File bytes two trees differ by: what tree `a` holds that `b` does not
/// (`removed`) and the reverse (`added`), counted as file sizes (a hard
/// link adds nothing beyond its target). Like [`diff_trees`] it reads only
/// what differs, plus the whole of a directory added or removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BytesDelta {
    pub removed: u64,
    pub added: u64,
}

impl BytesDelta {
    /// `before` file bytes moved by this delta (never below 0).
    pub fn apply(&self, before: u64) -> u64 {
        before
            .saturating_sub(self.removed)
            .saturating_add(self.added)
    }
}

/// What file bytes change going from tree `a` to tree `b`.
pub fn bytes_delta(store: &Store, a: ChunkId, b: ChunkId) -> Result<BytesDelta> {
    let reader = TreeReader::new(store);
    let mut delta = BytesDelta::default();
    bytes_delta_dir(&reader, a, b, &mut delta)?;
    Ok(delta)
}

/// The file bytes tree `tree` holds (it reads every directory).
pub fn tree_bytes(store: &Store, tree: ChunkId) -> Result<u64> {
    subtree_bytes(&TreeReader::new(store), tree)
}

fn subtree_bytes(reader: &TreeReader<'_>, dir: ChunkId) -> Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir];
    while let Some(id) = stack.pop() {
        for (_, entry) in reader.entries(&reader.dir(id)?)? {
            match entry {
                Entry::Dir(child) => stack.push(child),
                other => total = total.saturating_add(describe(&other).1),
            }
        }
    }
    Ok(total)
}

fn entry_bytes(reader: &TreeReader<'_>, entry: &Entry) -> Result<u64> {
    match entry {
        Entry::Dir(id) => subtree_bytes(reader, *id),
        other => Ok(describe(other).1),
    }
}

fn bytes_delta_dir(
    reader: &TreeReader<'_>,
    a: ChunkId,
    b: ChunkId,
    delta: &mut BytesDelta,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (da, db) = (reader.dir(a)?, reader.dir(b)?);
    let (ea, eb) = reader.entries_differing(&da, &db)?;
    for (_, x, y) in side_by_side(&ea, &eb) {
        match (x, y) {
            (Some(Entry::Dir(x)), Some(Entry::Dir(y))) => bytes_delta_dir(reader, *x, *y, delta)?,
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                if let Some(x) = x {
                    delta.removed = delta.removed.saturating_add(entry_bytes(reader, x)?);
                }
                if let Some(y) = y {
                    delta.added = delta.added.saturating_add(entry_bytes(reader, y)?);
                }
            }
        }
    }
    Ok(())
}
