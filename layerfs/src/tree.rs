//! Trees: directories encoded canonically as `cas` nodes.
//!
//! A tree id names a whole filesystem state. A directory is one node (type
//! [`TREE_DIR`]) holding its own attributes and its entries sorted by name;
//! a large directory splits its entries into page nodes (type
//! [`TREE_PAGE`]) at content-defined boundaries, so adding a file to a
//! directory of 100,000 entries rewrites one page, not the directory.
//! Every chunk an entry refers to (file blobs, child directories, pages) is
//! a link of the node, so `cas` garbage collection and fsck follow trees
//! without knowing this format. `FORMAT.md` has the byte layout.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cas::{ChunkId, Node, NodeType};

use crate::error::{Error, Result};

/// Node type of a directory node.
pub const TREE_DIR: NodeType = NodeType(2);
/// Node type of a directory page node.
pub const TREE_PAGE: NodeType = NodeType(3);
/// Tree encoding version written by this build.
pub const TREE_VERSION: u8 = 1;

/// Longest name of one directory entry, in bytes (as Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target or hard-link path, in bytes (as Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Most bytes of extended attributes (names and values) one inode may hold.
pub const MAX_XATTR_BYTES: usize = 256 << 10;
/// Longest extended attribute value (as Linux's XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 << 10;

/// A page ends after an entry whose name hash is 0 modulo this (once it
/// holds [`PAGE_MIN_ENTRIES`]), so boundaries follow content.
const PAGE_SPLIT_MODULUS: u32 = 256;
const PAGE_MIN_ENTRIES: usize = 32;
/// Hard bounds on one page.
const PAGE_MAX_ENTRIES: usize = 2048;
const PAGE_MAX_BYTES: usize = 512 << 10;
const NO_LINK: u32 = u32::MAX;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// A timestamp, with `nanos` checked to be below one second.
    pub fn new(secs: i64, nanos: u32) -> Option<Timestamp> {
        (nanos < 1_000_000_000).then_some(Timestamp { secs, nanos })
    }

    /// Now, by the system clock (the epoch if the clock is before it).
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// The same instant as a [`SystemTime`] (saturating at the limits of
    /// what the platform represents).
    pub fn to_system_time(self) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(self.nanos.min(999_999_999)));
        let whole = Duration::from_secs(self.secs.unsigned_abs());
        let at = if self.secs >= 0 {
            UNIX_EPOCH.checked_add(whole)
        } else {
            UNIX_EPOCH.checked_sub(whole)
        };
        at.and_then(|at| at.checked_add(nanos))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Attributes every inode carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Extended attributes by name (`security.capability`, POSIX ACLs as
    /// `system.posix_acl_access`, `user.*`, ...).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What a non-directory inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// A regular file: its length and its blob (`None` when empty).
    File {
        size: u64,
        blob: Option<ChunkId>,
    },
    /// A symbolic link and its target (any bytes but NUL).
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        rdev: u64,
    },
    BlockDevice {
        rdev: u64,
    },
    Fifo,
    Socket,
}

/// A non-directory inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub attrs: Attrs,
    /// Names this inode has in the whole tree (hard links + 1).
    pub nlink: u32,
    pub kind: InodeKind,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A subdirectory: its directory node (which holds its attributes).
    Dir(ChunkId),
    /// An inode's first name in the tree, in depth-first name order.
    Inode(Inode),
    /// A further name of an inode: the path (from the tree's root, without
    /// a leading `/`) of its first name.
    HardLink { target: Vec<u8> },
}

/// A directory as stored: its attributes and either its entries or pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirNode {
    pub attrs: Attrs,
    /// Entries in the whole directory.
    pub entry_count: u32,
    pub layout: DirLayout,
}

/// Where a directory's entries are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirLayout {
    /// All entries, in this node, sorted by name.
    Inline(Vec<(Vec<u8>, Entry)>),
    /// Page nodes in name order, each with its first name and entry count.
    Pages(Vec<PageRef>),
}

/// A page of a large directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRef {
    pub id: ChunkId,
    pub first_name: Vec<u8>,
    pub entries: u32,
}

/// Checks one directory entry name.
pub fn validate_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("name longer than 255 bytes");
    }
    if name == b"." || name == b".." {
        return Err("'.' or '..' as a name");
    }
    if name.contains(&b'/') {
        return Err("'/' inside a name");
    }
    if name.contains(&0) {
        return Err("NUL byte in a name");
    }
    Ok(())
}

/// Checks a set of extended attributes against the limits.
pub fn validate_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> std::result::Result<(), String> {
    let mut total = 0usize;
    for (name, value) in xattrs {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(&0) {
            return Err("extended attribute name empty, too long or with NUL".into());
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(format!(
                "extended attribute value of {} bytes exceeds {MAX_XATTR_VALUE}",
                value.len()
            ));
        }
        total += name.len() + value.len();
    }
    if total > MAX_XATTR_BYTES {
        return Err(format!(
            "extended attributes of {total} bytes exceed {MAX_XATTR_BYTES}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- encoding

struct Encoder {
    body: Vec<u8>,
    links: Vec<ChunkId>,
}

impl Encoder {
    fn new() -> Encoder {
        Encoder {
            body: Vec::new(),
            links: Vec::new(),
        }
    }

    fn u16(&mut self, v: u16) {
        self.body.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.body.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.body.extend_from_slice(&v.to_le_bytes());
    }
    fn time(&mut self, t: Timestamp) {
        self.body.extend_from_slice(&t.secs.to_le_bytes());
        self.u32(t.nanos);
    }
    fn bytes16(&mut self, b: &[u8]) {
        self.u16(b.len() as u16);
        self.body.extend_from_slice(b);
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.body.extend_from_slice(b);
    }
    fn link(&mut self, id: ChunkId) {
        self.u32(self.links.len() as u32);
        self.links.push(id);
    }

    fn attrs(&mut self, a: &Attrs) {
        self.u32(a.mode);
        self.u32(a.uid);
        self.u32(a.gid);
        self.time(a.atime);
        self.time(a.mtime);
        self.time(a.ctime);
        self.u16(a.xattrs.len() as u16);
        for (name, value) in &a.xattrs {
            self.bytes16(name);
            self.bytes32(value);
        }
    }

    fn entry(&mut self, name: &[u8], entry: &Entry) {
        self.bytes16(name);
        match entry {
            Entry::Dir(id) => {
                self.body.push(2);
                self.link(*id);
            }
            Entry::HardLink { target } => {
                self.body.push(4);
                self.bytes32(target);
            }
            Entry::Inode(inode) => {
                let tag = match inode.kind {
                    InodeKind::File { .. } => 1,
                    InodeKind::Symlink { .. } => 3,
                    InodeKind::CharDevice { .. } => 5,
                    InodeKind::BlockDevice { .. } => 6,
                    InodeKind::Fifo => 7,
                    InodeKind::Socket => 8,
                };
                self.body.push(tag);
                self.attrs(&inode.attrs);
                self.u32(inode.nlink);
                match &inode.kind {
                    InodeKind::File { size, blob } => {
                        self.u64(*size);
                        match blob {
                            Some(id) => self.link(*id),
                            None => self.u32(NO_LINK),
                        }
                    }
                    InodeKind::Symlink { target } => self.bytes32(target),
                    InodeKind::CharDevice { rdev } | InodeKind::BlockDevice { rdev } => {
                        self.u64(*rdev)
                    }
                    InodeKind::Fifo | InodeKind::Socket => {}
                }
            }
        }
    }

    fn finish(self, node_type: NodeType) -> Node {
        Node::new(node_type, self.links, self.body)
    }
}

/// Encodes one page of entries.
pub fn encode_page(entries: &[(Vec<u8>, Entry)]) -> Node {
    let mut e = Encoder::new();
    // About what an entry takes (its name, attributes and a link), so
    // that the body grows once.
    let names: usize = entries.iter().map(|(name, _)| name.len()).sum();
    e.body.reserve(8 + names + 80 * entries.len());
    e.links.reserve(entries.len());
    e.body.push(TREE_VERSION);
    e.body.extend_from_slice(&[0, 0, 0]);
    e.u32(entries.len() as u32);
    for (name, entry) in entries {
        e.entry(name, entry);
    }
    e.finish(TREE_PAGE)
}

/// Encodes a directory node.
pub fn encode_dir(dir: &DirNode) -> Node {
    let mut e = Encoder::new();
    e.body.push(TREE_VERSION);
    e.body.push(match dir.layout {
        DirLayout::Inline(_) => 0,
        DirLayout::Pages(_) => 1,
    });
    e.body.extend_from_slice(&[0, 0]);
    e.attrs(&dir.attrs);
    e.u32(dir.entry_count);
    match &dir.layout {
        DirLayout::Inline(entries) => {
            for (name, entry) in entries {
                e.entry(name, entry);
            }
        }
        DirLayout::Pages(pages) => {
            e.u32(pages.len() as u32);
            for page in pages {
                e.link(page.id);
                e.u32(page.entries);
                e.bytes16(&page.first_name);
            }
        }
    }
    e.finish(TREE_DIR)
}

/// Splits sorted entries into pages at content-defined boundaries: a page
/// ends after an entry whose name hash is 0 mod 256 (once it holds 32
/// entries), or when it reaches 2,048 entries or 512 KiB. Returns one
/// range when the directory fits in one page.
pub fn page_ranges(entries: &[(Vec<u8>, Entry)]) -> Vec<std::ops::Range<usize>> {
    let (mut ranges, tail) = complete_pages(entries);
    if tail < entries.len() || ranges.is_empty() {
        ranges.push(tail..entries.len());
    }
    ranges
}

/// The pages that end at a boundary when a page starts at `entries[0]`,
/// and where the rest (a page that ends only because the directory does)
/// starts. A boundary depends on the entries since the page's start
/// alone, so a directory changed in a few places keeps every page before
/// the first change, and the pages after it fall in step again.
pub(crate) fn complete_pages(entries: &[(Vec<u8>, Entry)]) -> (Vec<std::ops::Range<usize>>, usize) {
    complete_pages_knowing(entries, |_| false)
}

/// [`complete_pages`], where `no_split(i)` says that the name of
/// `entries[i]` is known not to end a page by content (see
/// [`ends_no_page_by_name`]): its hash is not computed. The result is
/// the same as [`complete_pages`]' whenever `no_split` is right.
pub(crate) fn complete_pages_knowing(
    entries: &[(Vec<u8>, Entry)],
    no_split: impl Fn(usize) -> bool,
) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, (name, entry)) in entries.iter().enumerate() {
        bytes += name.len() + approximate_entry_len(entry);
        let count = i + 1 - start;
        let boundary = count >= PAGE_MAX_ENTRIES
            || bytes >= PAGE_MAX_BYTES
            || (count >= PAGE_MIN_ENTRIES && !no_split(i) && splits_by_name(name));
        if boundary {
            ranges.push(start..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    (ranges, start)
}

/// Whether a page that holds at least [`PAGE_MIN_ENTRIES`] entries ends
/// after an entry named `name`.
fn splits_by_name(name: &[u8]) -> bool {
    let hash = blake3::hash(name);
    let word = u32::from_le_bytes([
        hash.as_bytes()[0],
        hash.as_bytes()[1],
        hash.as_bytes()[2],
        hash.as_bytes()[3],
    ]);
    word % PAGE_SPLIT_MODULUS == 0
}

/// Whether the name of entry `index` of a stored page of `len` entries is
/// known not to end a page by content: the page was cut by
/// [`complete_pages`] and did not end there although it held enough
/// entries to. (A page cut by another rule only makes a patch cut
/// differently: a valid tree, pages elsewhere than a whole write puts
/// them.)
pub(crate) fn ends_no_page_by_name(index: usize, len: usize) -> bool {
    index + 1 >= PAGE_MIN_ENTRIES && index + 1 < len
}

fn approximate_entry_len(entry: &Entry) -> usize {
    match entry {
        Entry::Dir(_) => 40,
        Entry::HardLink { target } => 8 + target.len(),
        Entry::Inode(inode) => {
            let xattrs: usize = inode
                .attrs
                .xattrs
                .iter()
                .map(|(n, v)| 6 + n.len() + v.len())
                .sum();
            let kind = match &inode.kind {
                InodeKind::Symlink { target } => target.len(),
                _ => 0,
            };
            100 + xattrs + kind
        }
    }
}

// ---------------------------------------------------------------- decoding

struct Decoder<'a> {
    id: ChunkId,
    body: &'a [u8],
    at: usize,
    links: &'a [ChunkId],
    /// Links referred to so far; every link must be referred to once, in order.
    next_link: usize,
}

impl<'a> Decoder<'a> {
    fn bad(&self, reason: &str) -> Error {
        Error::malformed(self.id, format!("{reason} (at body offset {})", self.at))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.body.len());
        let Some(end) = end else {
            return Err(self.bad("truncated"));
        };
        let out = &self.body[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn time(&mut self) -> Result<Timestamp> {
        let secs = self.u64()? as i64;
        let nanos = self.u32()?;
        Timestamp::new(secs, nanos).ok_or_else(|| self.bad("nanoseconds out of range"))
    }
    fn bytes16(&mut self) -> Result<Vec<u8>> {
        let n = self.u16()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn bytes32(&mut self, max: usize) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.bad("field longer than its limit"));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn link(&mut self) -> Result<ChunkId> {
        let index = self.u32()? as usize;
        if index != self.next_link || index >= self.links.len() {
            return Err(self.bad("link index out of order or out of range"));
        }
        self.next_link += 1;
        Ok(self.links[index])
    }

    fn attrs(&mut self) -> Result<Attrs> {
        let mode = self.u32()?;
        if mode & !0o7777 != 0 {
            return Err(self.bad("mode has bits beyond 0o7777"));
        }
        let uid = self.u32()?;
        let gid = self.u32()?;
        let atime = self.time()?;
        let mtime = self.time()?;
        let ctime = self.time()?;
        let count = self.u16()?;
        let mut xattrs = BTreeMap::new();
        let mut last: Option<Vec<u8>> = None;
        for _ in 0..count {
            let name = self.bytes16()?;
            let value = self.bytes32(MAX_XATTR_VALUE)?;
            if last.as_ref().is_some_and(|l| *l >= name) {
                return Err(self.bad("extended attributes not sorted"));
            }
            last = Some(name.clone());
            xattrs.insert(name, value);
        }
        validate_xattrs(&xattrs).map_err(|r| self.bad(&r))?;
        Ok(Attrs {
            mode,
            uid,
            gid,
            atime,
            mtime,
            ctime,
            xattrs,
        })
    }

    fn entries(&mut self, count: u32) -> Result<Vec<(Vec<u8>, Entry)>> {
        let mut out: Vec<(Vec<u8>, Entry)> = Vec::with_capacity((count as usize).min(4096));
        for _ in 0..count {
            let name = self.bytes16()?;
            validate_name(&name).map_err(|r| self.bad(r))?;
            if out.last().is_some_and(|(last, _)| *last >= name) {
                return Err(self.bad("entries not sorted by name"));
            }
            let tag = self.u8()?;
            let entry = match tag {
                2 => Entry::Dir(self.link()?),
                4 => {
                    let target = self.bytes32(MAX_PATH_LEN)?;
                    if target.is_empty() || target.contains(&0) {
                        return Err(self.bad("empty hard-link target"));
                    }
                    Entry::HardLink { target }
                }
                1 | 3 | 5..=8 => {
                    let attrs = self.attrs()?;
                    let nlink = self.u32()?;
                    if nlink == 0 {
                        return Err(self.bad("inode with no links"));
                    }
                    let kind = match tag {
                        1 => {
                            let size = self.u64()?;
                            let at = self.at;
                            let index = u32::from_le_bytes(
                                self.body
                                    .get(at..at + 4)
                                    .and_then(|b| b.try_into().ok())
                                    .ok_or_else(|| self.bad("truncated"))?,
                            );
                            let blob = if index == NO_LINK {
                                self.at += 4;
                                if size != 0 {
                                    return Err(self.bad("non-empty file without a blob"));
                                }
                                None
                            } else {
                                Some(self.link()?)
                            };
                            InodeKind::File { size, blob }
                        }
                        3 => {
                            let target = self.bytes32(MAX_PATH_LEN)?;
                            if target.is_empty() || target.contains(&0) {
                                return Err(self.bad("empty symlink target or NUL in it"));
                            }
                            InodeKind::Symlink { target }
                        }
                        5 => InodeKind::CharDevice { rdev: self.u64()? },
                        6 => InodeKind::BlockDevice { rdev: self.u64()? },
                        7 => InodeKind::Fifo,
                        _ => InodeKind::Socket,
                    };
                    Entry::Inode(Inode { attrs, nlink, kind })
                }
                _ => return Err(self.bad(&format!("unknown entry kind {tag}"))),
            };
            out.push((name, entry));
        }
        Ok(out)
    }

    fn done(&self) -> Result<()> {
        if self.at != self.body.len() {
            return Err(self.bad("trailing bytes"));
        }
        if self.next_link != self.links.len() {
            return Err(self.bad("links no entry refers to"));
        }
        Ok(())
    }
}

fn header(d: &mut Decoder<'_>) -> Result<u8> {
    let version = d.u8()?;
    if version != TREE_VERSION {
        return Err(d.bad(&format!("unknown tree version {version}")));
    }
    d.u8()
}

/// Decodes directory node `id`.
pub fn decode_dir(id: ChunkId, node: &Node) -> Result<DirNode> {
    if node.node_type != TREE_DIR {
        return Err(Error::malformed(id, "not a directory node"));
    }
    let mut d = Decoder {
        id,
        body: &node.body,
        at: 0,
        links: &node.links,
        next_link: 0,
    };
    let layout = header(&mut d)?;
    if d.u16()? != 0 {
        return Err(d.bad("reserved bytes set"));
    }
    let attrs = d.attrs()?;
    let entry_count = d.u32()?;
    let layout = match layout {
        0 => DirLayout::Inline(d.entries(entry_count)?),
        1 => {
            let pages = d.u32()?;
            if pages < 2 {
                return Err(d.bad("a paged directory needs two pages or more"));
            }
            let mut out: Vec<PageRef> = Vec::with_capacity((pages as usize).min(4096));
            let mut total = 0u64;
            for _ in 0..pages {
                let id = d.link()?;
                let entries = d.u32()?;
                let first_name = d.bytes16()?;
                validate_name(&first_name).map_err(|r| d.bad(r))?;
                if entries == 0 || out.last().is_some_and(|p| p.first_name >= first_name) {
                    return Err(d.bad("pages empty or not sorted"));
                }
                total += u64::from(entries);
                out.push(PageRef {
                    id,
                    first_name,
                    entries,
                });
            }
            if total != u64::from(entry_count) {
                return Err(d.bad("page entry counts do not add up"));
            }
            DirLayout::Pages(out)
        }
        other => return Err(d.bad(&format!("unknown directory layout {other}"))),
    };
    d.done()?;
    Ok(DirNode {
        attrs,
        entry_count,
        layout,
    })
}

/// Decodes page node `id`, checking it holds `expected` entries starting at
/// `first_name`.
pub fn decode_page(id: ChunkId, node: &Node, expected: &PageRef) -> Result<Vec<(Vec<u8>, Entry)>> {
    if node.node_type != TREE_PAGE {
        return Err(Error::malformed(id, "not a directory page node"));
    }
    let mut d = Decoder {
        id,
        body: &node.body,
        at: 0,
        links: &node.links,
        next_link: 0,
    };
    header(&mut d)?;
    if d.u16()? != 0 {
        return Err(d.bad("reserved bytes set"));
    }
    let count = d.u32()?;
    let entries = d.entries(count)?;
    d.done()?;
    if count != expected.entries || entries.first().map(|(n, _)| n) != Some(&expected.first_name) {
        return Err(Error::malformed(
            id,
            "page does not match its directory's description of it",
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cas::ChunkKind;

    fn id(n: u8) -> ChunkId {
        ChunkId::compute(ChunkKind::Data, &[n])
    }

    fn sample_entries() -> Vec<(Vec<u8>, Entry)> {
        let attrs = Attrs {
            mode: 0o4755,
            uid: 1000,
            gid: 100,
            atime: Timestamp::new(-5, 999_999_999).unwrap(),
            mtime: Timestamp::new(1_700_000_000, 123).unwrap(),
            ctime: Timestamp::new(1_700_000_001, 0).unwrap(),
            xattrs: [(b"security.capability".to_vec(), vec![1, 0, 0, 2])].into(),
        };
        let inode = |kind| {
            Entry::Inode(Inode {
                attrs: attrs.clone(),
                nlink: 1,
                kind,
            })
        };
        vec![
            (
                b"a".to_vec(),
                inode(InodeKind::File {
                    size: 5,
                    blob: Some(id(1)),
                }),
            ),
            (b"b".to_vec(), Entry::Dir(id(2))),
            (
                b"c".to_vec(),
                inode(InodeKind::File {
                    size: 0,
                    blob: None,
                }),
            ),
            (
                b"d".to_vec(),
                Entry::HardLink {
                    target: b"x/a".to_vec(),
                },
            ),
            (
                b"e".to_vec(),
                inode(InodeKind::Symlink {
                    target: b"../etc".to_vec(),
                }),
            ),
            (b"f".to_vec(), inode(InodeKind::CharDevice { rdev: 0x0103 })),
            (
                b"g".to_vec(),
                inode(InodeKind::BlockDevice { rdev: 0x0801 }),
            ),
            (b"h".to_vec(), inode(InodeKind::Fifo)),
            (b"i".to_vec(), inode(InodeKind::Socket)),
        ]
    }

    #[test]
    fn directories_round_trip_and_reject_every_truncation() {
        let dir = DirNode {
            attrs: Attrs {
                mode: 0o1777,
                ..Attrs::default()
            },
            entry_count: 9,
            layout: DirLayout::Inline(sample_entries()),
        };
        let node = encode_dir(&dir);
        let nid = id(9);
        assert_eq!(decode_dir(nid, &node).unwrap(), dir);
        for cut in 0..node.body.len() {
            let mut short = node.clone();
            short.body.truncate(cut);
            assert!(decode_dir(nid, &short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unsorted_or_invalid_names_are_malformed() {
        let mut entries = sample_entries();
        entries.swap(0, 1);
        let dir = DirNode {
            attrs: Attrs::default(),
            entry_count: 9,
            layout: DirLayout::Inline(entries),
        };
        assert!(decode_dir(id(0), &encode_dir(&dir)).is_err());
        for bad in [&b".."[..], b"a/b", b"", b"a\0"] {
            let dir = DirNode {
                attrs: Attrs::default(),
                entry_count: 1,
                layout: DirLayout::Inline(vec![(bad.to_vec(), Entry::Dir(id(1)))]),
            };
            assert!(decode_dir(id(0), &encode_dir(&dir)).is_err());
        }
    }

    #[test]
    fn pages_split_by_content_and_stay_put_when_a_name_is_added() {
        let entries: Vec<_> = (0..10_000)
            .map(|i| (format!("file{i:05}").into_bytes(), Entry::Dir(id(1))))
            .collect();
        let ranges = page_ranges(&entries);
        assert!(ranges.len() > 10, "{} pages", ranges.len());
        let mut more = entries.clone();
        more.insert(5000, (b"file05000a".to_vec(), Entry::Dir(id(1))));
        let after = page_ranges(&more);
        // Pages before the insertion point are identical.
        let same = ranges
            .iter()
            .zip(&after)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(same >= ranges.len() / 2 - 2);
        assert!(ranges.len().abs_diff(after.len()) <= 1);
    }
}
