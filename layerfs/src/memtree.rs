//! An in-memory, mutable filesystem tree: what importers build and layers
//! are applied to, before it is stored as tree nodes.
//!
//! Paths are checked here, once, for every importer: no `..`, no absolute
//! paths, no name with NUL or longer than 255 bytes, and no path that runs
//! through a symlink (so an archive cannot plant `dir -> /etc` and then
//! write `dir/passwd`). A new entry replaces the name it lands on; it never
//! writes through it, so a hard link planted earlier cannot be used to
//! change the file it points at.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use cas::{ChunkId, Store, Writer};

use crate::error::{Error, Result};
use crate::tree::{
    complete_pages_knowing, decode_dir, decode_page, encode_dir, encode_page, ends_no_page_by_name,
    page_ranges, validate_name, Attrs, DirLayout, DirNode, Entry, Inode, InodeKind, PageRef,
    MAX_PATH_LEN,
};

/// Deepest directory nesting accepted.
pub const MAX_DEPTH: usize = 1024;

/// Index of a node in a [`MemTree`].
pub type NodeIndex = usize;

/// A node of the in-memory tree.
#[derive(Clone, Debug)]
pub struct MemNode {
    pub attrs: Attrs,
    pub kind: MemKind,
}

/// What a node is.
#[derive(Clone, Debug)]
pub enum MemKind {
    Dir(BTreeMap<Vec<u8>, NodeIndex>),
    Other(InodeKind),
}

/// A mutable tree. Directory entries name nodes by index; several entries
/// naming one non-directory node are hard links.
#[derive(Clone, Debug)]
pub struct MemTree {
    nodes: Vec<MemNode>,
    root: NodeIndex,
}

/// The attributes of directories an importer creates because an entry
/// needs them but the archive never listed them.
pub fn implicit_dir_attrs() -> Attrs {
    Attrs {
        mode: 0o755,
        ..Attrs::default()
    }
}

/// Splits a relative path into checked components. Leading `./` and `.`
/// components are dropped; `..`, a leading `/`, NUL and over-long names are
/// errors. The empty path (or `.`) is the root.
pub fn split_path(path: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    if path.len() > MAX_PATH_LEN {
        return Err(format!("path longer than {MAX_PATH_LEN} bytes"));
    }
    if path.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if path.contains(&0) {
        return Err("NUL byte in path".into());
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("'..' in path".into()),
            name => {
                validate_name(name).map_err(str::to_string)?;
                out.push(name);
            }
        }
    }
    if out.len() > MAX_DEPTH {
        return Err(format!("path deeper than {MAX_DEPTH} directories"));
    }
    Ok(out)
}

/// Renders a path for messages.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

impl MemTree {
    /// A tree holding only a root directory with these attributes.
    pub fn new(root_attrs: Attrs) -> MemTree {
        MemTree {
            nodes: vec![MemNode {
                attrs: root_attrs,
                kind: MemKind::Dir(BTreeMap::new()),
            }],
            root: 0,
        }
    }

    /// The root directory.
    pub fn root(&self) -> NodeIndex {
        self.root
    }

    /// Node `index`.
    pub fn node(&self, index: NodeIndex) -> &MemNode {
        &self.nodes[index]
    }

    /// Node `index`, mutably.
    pub fn node_mut(&mut self, index: NodeIndex) -> &mut MemNode {
        &mut self.nodes[index]
    }

    /// Adds a detached node; link it with [`MemTree::insert`].
    pub fn add_node(&mut self, node: MemNode) -> NodeIndex {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Finds `path` without following symlinks; `None` if it does not exist.
    pub fn lookup(&self, path: &[u8]) -> std::result::Result<Option<NodeIndex>, String> {
        let parts = split_path(path)?;
        let mut at = self.root;
        for part in parts {
            let MemKind::Dir(children) = &self.nodes[at].kind else {
                return Ok(None);
            };
            match children.get(part) {
                Some(&child) => at = child,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The directory that holds `path`'s last component, creating missing
    /// directories with `implicit` attributes. Fails if a component is not a
    /// directory (a symlink included). Returns the directory and the name.
    fn parent_of<'p>(
        &mut self,
        parts: &[&'p [u8]],
        implicit: &Attrs,
    ) -> std::result::Result<(NodeIndex, &'p [u8]), String> {
        let Some((last, dirs)) = parts.split_last() else {
            return Err("the root itself cannot be replaced".into());
        };
        let mut at = self.root;
        for (depth, part) in dirs.iter().enumerate() {
            let existing = match &self.nodes[at].kind {
                MemKind::Dir(children) => children.get(*part).copied(),
                MemKind::Other(_) => None,
            };
            at = match existing {
                Some(child) => match &self.nodes[child].kind {
                    MemKind::Dir(_) => child,
                    MemKind::Other(InodeKind::Symlink { .. }) => {
                        return Err(format!(
                            "goes through the symlink '{}' planted earlier",
                            show(&dirs[..=depth].join(&b'/'))
                        ))
                    }
                    MemKind::Other(_) => {
                        return Err(format!(
                            "'{}' is not a directory",
                            show(&dirs[..=depth].join(&b'/'))
                        ))
                    }
                },
                None => {
                    let dir = self.add_node(MemNode {
                        attrs: implicit.clone(),
                        kind: MemKind::Dir(BTreeMap::new()),
                    });
                    self.children_mut(at).insert(part.to_vec(), dir);
                    dir
                }
            };
        }
        Ok((at, last))
    }

    fn children_mut(&mut self, dir: NodeIndex) -> &mut BTreeMap<Vec<u8>, NodeIndex> {
        match &mut self.nodes[dir].kind {
            MemKind::Dir(children) => children,
            MemKind::Other(_) => unreachable!("parent_of returns directories only"),
        }
    }

    /// Puts `node` at `path`, replacing what is there. A directory put
    /// where a directory exists keeps the existing children and takes the
    /// new attributes (as tar does). The path `.` sets the root's
    /// attributes.
    pub fn insert(
        &mut self,
        path: &[u8],
        node: MemNode,
        implicit: &Attrs,
    ) -> std::result::Result<NodeIndex, String> {
        let parts = split_path(path)?;
        if parts.is_empty() {
            return match node.kind {
                MemKind::Dir(_) => {
                    self.nodes[self.root].attrs = node.attrs;
                    Ok(self.root)
                }
                MemKind::Other(_) => Err("the root must be a directory".into()),
            };
        }
        let (parent, name) = self.parent_of(&parts, implicit)?;
        if let Some(&existing) = self.child(parent, name) {
            if matches!(self.nodes[existing].kind, MemKind::Dir(_))
                && matches!(node.kind, MemKind::Dir(_))
            {
                self.nodes[existing].attrs = node.attrs;
                return Ok(existing);
            }
        }
        let index = self.add_node(node);
        self.children_mut(parent).insert(name.to_vec(), index);
        Ok(index)
    }

    /// Gives `path` a further name for the node at `target` (a hard link).
    pub fn link(
        &mut self,
        path: &[u8],
        target: &[u8],
        implicit: &Attrs,
    ) -> std::result::Result<(), String> {
        let target_parts = split_path(target).map_err(|r| format!("link target: {r}"))?;
        let mut at = self.root;
        for part in &target_parts {
            let next = match &self.nodes[at].kind {
                MemKind::Dir(children) => children.get(*part).copied(),
                MemKind::Other(_) => None,
            };
            at = next.ok_or_else(|| {
                format!(
                    "hard link to '{}', which does not exist (or runs through a non-directory)",
                    show(target)
                )
            })?;
        }
        if matches!(self.nodes[at].kind, MemKind::Dir(_)) {
            return Err(format!("hard link to the directory '{}'", show(target)));
        }
        let parts = split_path(path)?;
        let (parent, name) = self.parent_of(&parts, implicit)?;
        self.children_mut(parent).insert(name.to_vec(), at);
        Ok(())
    }

    /// Removes `path` (and everything under it); returns whether it existed.
    /// Missing parents are not created.
    pub fn remove(&mut self, path: &[u8]) -> std::result::Result<bool, String> {
        let parts = split_path(path)?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err("the root cannot be removed".into());
        };
        let mut at = self.root;
        for part in dirs {
            match self.child(at, part) {
                Some(&child) if matches!(self.nodes[child].kind, MemKind::Dir(_)) => at = child,
                _ => return Ok(false),
            }
        }
        Ok(self.children_mut(at).remove(*last).is_some())
    }

    /// Removes every child of directory `path` for which `keep` is false.
    pub fn clear_dir(
        &mut self,
        path: &[u8],
        keep: impl Fn(&[u8]) -> bool,
    ) -> std::result::Result<(), String> {
        let Some(dir) = self.lookup(path)? else {
            return Ok(());
        };
        if let MemKind::Dir(children) = &mut self.nodes[dir].kind {
            children.retain(|name, _| keep(name));
        }
        Ok(())
    }

    fn child(&self, dir: NodeIndex, name: &[u8]) -> Option<&NodeIndex> {
        match &self.nodes[dir].kind {
            MemKind::Dir(children) => children.get(name),
            MemKind::Other(_) => None,
        }
    }

    /// Every reachable node with its first path (depth-first, names in
    /// order) and how many names it has. The root has the empty path.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeIndex)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), self.root)];
        while let Some((path, index)) = stack.pop() {
            out.push((path.clone(), index));
            if let MemKind::Dir(children) = &self.nodes[index].kind {
                for (name, &child) in children.iter().rev() {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    stack.push((p, child));
                }
            }
        }
        out
    }

    /// Writes the tree as tree nodes and returns the root's id. Unchanged
    /// subtrees encode to the same bytes, so they cost an index lookup,
    /// not a write.
    pub fn store(&self, writer: &Writer) -> Result<ChunkId> {
        let order = self.walk();
        let mut names: HashMap<NodeIndex, u32> = HashMap::new();
        for (_, index) in &order {
            *names.entry(*index).or_insert(0) += 1;
        }
        let mut first_path: HashMap<NodeIndex, Vec<u8>> = HashMap::new();
        for (path, index) in &order {
            first_path.entry(*index).or_insert_with(|| path.clone());
        }
        let mut ctx = StoreCtx {
            tree: self,
            writer,
            names,
            first_path,
            dir_ids: HashMap::new(),
        };
        // Children before parents: directories in reverse walk order.
        for (path, index) in order.iter().rev() {
            if let MemKind::Dir(_) = self.nodes[*index].kind {
                if ctx.first_path.get(index) == Some(path) {
                    let id = ctx.store_dir(path, *index)?;
                    ctx.dir_ids.insert(*index, id);
                }
            }
        }
        ctx.dir_ids
            .get(&self.root)
            .copied()
            .ok_or_else(|| Error::BadPath {
                path: "/".into(),
                reason: "root was not stored".into(),
            })
    }

    /// Reads tree `root` from the store into memory.
    pub fn load(store: &Store, root: ChunkId) -> Result<MemTree> {
        let reader = TreeReader::new(store);
        let dir = reader.dir(root)?;
        let mut tree = MemTree::new(dir.attrs.clone());
        let mut stack = vec![(Vec::<u8>::new(), tree.root, dir)];
        let mut depth_guard = 0usize;
        while let Some((path, index, dir)) = stack.pop() {
            depth_guard += 1;
            if depth_guard > 100_000_000 {
                return Err(Error::malformed(root, "tree too large"));
            }
            let entries = reader.entries(&dir)?;
            // Pushed in reverse so directories are visited in name order,
            // which puts every hard link's first name before the link.
            let mut subdirs = Vec::new();
            for (name, entry) in entries {
                let mut child_path = path.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(&name);
                match entry {
                    Entry::Dir(id) => {
                        let child = reader.dir(id)?;
                        let node = tree.add_node(MemNode {
                            attrs: child.attrs.clone(),
                            kind: MemKind::Dir(BTreeMap::new()),
                        });
                        tree.children_mut(index).insert(name, node);
                        subdirs.push((child_path, node, child));
                    }
                    Entry::Inode(inode) => {
                        let node = tree.add_node(MemNode {
                            attrs: inode.attrs,
                            kind: MemKind::Other(inode.kind),
                        });
                        tree.children_mut(index).insert(name, node);
                    }
                    Entry::HardLink { target } => {
                        let found = tree
                            .lookup(&target)
                            .ok()
                            .flatten()
                            .filter(|&i| !matches!(tree.nodes[i].kind, MemKind::Dir(_)));
                        let Some(node) = found else {
                            return Err(Error::malformed(
                                root,
                                format!(
                                    "hard link '{}' names '{}', which does not precede it",
                                    show(&child_path),
                                    show(&target)
                                ),
                            ));
                        };
                        tree.children_mut(index).insert(name, node);
                    }
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(tree)
    }
}

struct StoreCtx<'a> {
    tree: &'a MemTree,
    writer: &'a Writer,
    names: HashMap<NodeIndex, u32>,
    first_path: HashMap<NodeIndex, Vec<u8>>,
    dir_ids: HashMap<NodeIndex, ChunkId>,
}

impl StoreCtx<'_> {
    fn store_dir(&self, path: &[u8], index: NodeIndex) -> Result<ChunkId> {
        let MemKind::Dir(children) = &self.tree.nodes[index].kind else {
            unreachable!("store_dir is called on directories");
        };
        let mut entries = Vec::with_capacity(children.len());
        for (name, &child) in children {
            let mut child_path = path.to_vec();
            if !child_path.is_empty() {
                child_path.push(b'/');
            }
            child_path.extend_from_slice(name);
            let node = &self.tree.nodes[child];
            let entry = match &node.kind {
                MemKind::Dir(_) => {
                    let id = self.dir_ids.get(&child).ok_or_else(|| Error::BadPath {
                        path: show(&child_path),
                        reason: "a directory appears under two names".into(),
                    })?;
                    Entry::Dir(*id)
                }
                MemKind::Other(kind) => {
                    let first = &self.first_path[&child];
                    if *first == child_path {
                        Entry::Inode(Inode {
                            attrs: node.attrs.clone(),
                            nlink: self.names[&child],
                            kind: kind.clone(),
                        })
                    } else {
                        Entry::HardLink {
                            target: first.clone(),
                        }
                    }
                }
            };
            entries.push((name.clone(), entry));
        }
        store_entries(
            self.writer,
            self.tree.nodes[index].attrs.clone(),
            entries,
            path,
        )
    }
}

/// `path/name` (`name` alone under the root's empty path).
pub(crate) fn join(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = path.to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Stores a directory with these entries (sorted by name), in pages when
/// large; returns its id.
pub(crate) fn store_entries(
    writer: &Writer,
    attrs: Attrs,
    entries: Vec<(Vec<u8>, Entry)>,
    path: &[u8],
) -> Result<ChunkId> {
    let entry_count = u32::try_from(entries.len()).map_err(|_| Error::BadPath {
        path: show(path),
        reason: "more than 2^32 entries".into(),
    })?;
    let ranges = page_ranges(&entries);
    let layout = if ranges.len() <= 1 {
        DirLayout::Inline(entries)
    } else {
        let mut pages = Vec::with_capacity(ranges.len());
        for range in ranges {
            let slice = &entries[range];
            let id = writer.put_node(&encode_page(slice))?.id;
            pages.push(crate::tree::PageRef {
                id,
                first_name: slice[0].0.clone(),
                entries: slice.len() as u32,
            });
        }
        DirLayout::Pages(pages)
    };
    let node = encode_dir(&DirNode {
        attrs,
        entry_count,
        layout,
    });
    Ok(writer.put_node(&node)?.id)
}

/// Stores directory `base` with `changes` applied (sorted by name, each
/// setting an entry or, with `None`, removing it) and attributes `attrs`;
/// returns the new directory's id, the same id [`store_entries`] gives
/// the whole changed directory. Only the pages the changes fall in are
/// read and written again (and the following ones while the content-
/// defined boundaries are out of step), so changing a few entries of a
/// large directory costs a page, not the directory.
pub(crate) fn store_patched(
    reader: &TreeReader<'_>,
    writer: &Writer,
    base: ChunkId,
    attrs: Attrs,
    changes: &[(Vec<u8>, Option<Entry>)],
    path: &[u8],
) -> Result<(ChunkId, Patch)> {
    let cached = patched_dirs().remove(&base).map(|(_, d)| d);
    let (base_node, dir) = match cached {
        Some(cached) => Arc::try_unwrap(cached).unwrap_or_else(|a| (*a).clone()),
        None => {
            // Read once: decoded here, pinned below.
            let node = reader.store().get_verified_node(&base)?;
            let dir = decode_dir(base, node.node())?;
            (node, dir)
        }
    };
    let mut patch = Patch {
        // As `diff_trees`: the root's own attributes are not a path.
        changed: u64::from(dir.attrs != attrs && !path.is_empty()),
        descend: Vec::new(),
    };
    let pages = match dir.layout {
        DirLayout::Inline(entries) => {
            let entries = apply_changes(entries, changes, &mut patch);
            return Ok((store_entries(writer, attrs, entries, path)?, patch));
        }
        DirLayout::Pages(pages) => pages,
    };
    // The new node links to most of the pages the old one does.
    writer.pin_node(&base_node)?;
    let page_of = |name: &[u8]| {
        pages
            .partition_point(|p| p.first_name.as_slice() <= name)
            .saturating_sub(1)
    };
    let mut out: Vec<PageRef> = Vec::with_capacity(pages.len() + 1);
    // Entries read and changed whose page has not ended at a boundary yet.
    let mut carry: Vec<(Vec<u8>, Entry)> = Vec::new();
    // For each entry of `carry`, whether its name is known not to end a
    // page by content.
    let mut no_split: Vec<bool> = Vec::new();
    let mut next_change = 0;
    let mut entry_count = 0usize;
    for (index, page) in pages.iter().enumerate() {
        let end = next_change
            + changes[next_change..].partition_point(|(name, _)| page_of(name) <= index);
        let own = &changes[next_change..end];
        next_change = end;
        if own.is_empty() && carry.is_empty() {
            // Starts where it started before, with the same entries: the
            // same page.
            entry_count += page.entries as usize;
            out.push(page.clone());
            continue;
        }
        // A page is patched once: the next patch starts from the page
        // this one writes, so a cached page is taken out of the cache.
        let read = match patched_pages().remove(&page.id) {
            Some((_, cached)) => Arc::try_unwrap(cached).unwrap_or_else(|a| (*a).clone()),
            None => {
                let node = reader.store().get_verified_node(&page.id)?;
                let entries = decode_page(page.id, node.node(), page)?;
                PatchedPage { node, entries }
            }
        };
        // The new pages link mostly to what this one links to: known
        // stored, not looked up again.
        writer.pin_node(&read.node)?;
        // Names the page did not end at, although it could have, will
        // not end a page now either: their hashes are not computed again.
        let read_len = read.entries.len();
        let changed = apply_changes_with(read.entries, own, &mut patch, |old| {
            no_split.push(old.is_some_and(|at| ends_no_page_by_name(at, read_len)))
        });
        carry.extend(changed);
        debug_assert_eq!(carry.len(), no_split.len());
        let (ranges, tail) = complete_pages_knowing(&carry, |i| no_split[i]);
        // The complete pages go; what follows them carries on.
        no_split.drain(..tail);
        let rest = carry.split_off(tail);
        let mut done = std::mem::replace(&mut carry, rest).into_iter();
        for range in ranges {
            entry_count += range.len();
            let page: Vec<_> = done.by_ref().take(range.len()).collect();
            out.push(put_patched_page(writer, page)?);
        }
    }
    if !carry.is_empty() {
        entry_count += carry.len();
        out.push(put_patched_page(writer, carry)?);
    }
    let entry_count = u32::try_from(entry_count).map_err(|_| Error::BadPath {
        path: show(path),
        reason: "more than 2^32 entries".into(),
    })?;
    let layout = if out.len() <= 1 {
        // One page or none: a directory that small is written inline.
        let entries = match out.first() {
            Some(page) => {
                let node = reader.store().get_node(&page.id)?;
                decode_page(page.id, &node, page)?
            }
            None => Vec::new(),
        };
        DirLayout::Inline(entries)
    } else {
        DirLayout::Pages(out)
    };
    let dir = DirNode {
        attrs,
        entry_count,
        layout,
    };
    let node = writer.put_verified_node(encode_dir(&dir))?;
    let id = node.id();
    if matches!(dir.layout, DirLayout::Pages(_)) {
        patched_dirs().insert(id, Arc::new((node.without_body(), dir)));
    }
    Ok((id, patch))
}

/// What a patch changed, counted as [`crate::diff_trees`] counts paths.
#[derive(Debug, Default)]
pub(crate) struct Patch {
    /// Paths added, removed or modified in this directory itself (a
    /// directory's own attributes, a file, a whole directory added or
    /// removed; a kind changed counts twice, as removed and added).
    pub changed: u64,
    /// Names that were and are directories, with other ids: what changed
    /// under them is counted there.
    pub descend: Vec<Vec<u8>>,
}

impl Patch {
    fn count(&mut self, name: &[u8], old: Option<&Entry>, new: Option<&Entry>) {
        let kind = crate::diff::kind_of;
        match (old, new) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => self.changed += 1,
            (Some(Entry::Dir(x)), Some(Entry::Dir(y))) => {
                if x != y {
                    self.descend.push(name.to_vec());
                }
            }
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) if kind(x) == kind(y) => self.changed += 1,
            (Some(_), Some(_)) => self.changed += 2,
        }
    }
}

/// A directory page a patch wrote, decoded.
#[derive(Clone)]
struct PatchedPage {
    node: cas::VerifiedNode,
    entries: Vec<(Vec<u8>, Entry)>,
}

#[derive(Clone)]
struct PageWeight;

impl quick_cache::Weighter<ChunkId, Arc<PatchedPage>> for PageWeight {
    fn weight(&self, _: &ChunkId, page: &Arc<PatchedPage>) -> u64 {
        let names: usize = page.entries.iter().map(|(name, _)| name.len()).sum();
        (names + 120 * page.entries.len() + 32 * page.node.node().links.len()) as u64 + 64
    }
}

/// Bytes of decoded pages [`patched_pages`] keeps (about 2,000 pages of
/// 300 entries).
const PATCHED_PAGES_BYTES: u64 = 96 << 20;

/// The pages patches wrote lately, by id (content-addressed, so the same
/// in any store): a session that commits again and again in the same
/// directories patches the pages its last commit wrote without reading
/// and decoding them back.
fn patched_pages() -> &'static quick_cache::sync::Cache<ChunkId, Arc<PatchedPage>, PageWeight> {
    static PAGES: OnceLock<quick_cache::sync::Cache<ChunkId, Arc<PatchedPage>, PageWeight>> =
        OnceLock::new();
    PAGES.get_or_init(|| {
        quick_cache::sync::Cache::with_weighter(2048, PATCHED_PAGES_BYTES, PageWeight)
    })
}

/// The directory nodes (of pages) patches wrote lately, by id, decoded:
/// the next patch of the directory starts from one.
#[allow(clippy::type_complexity)]
fn patched_dirs() -> &'static quick_cache::sync::Cache<ChunkId, Arc<(cas::VerifiedNode, DirNode)>> {
    static DIRS: OnceLock<quick_cache::sync::Cache<ChunkId, Arc<(cas::VerifiedNode, DirNode)>>> =
        OnceLock::new();
    DIRS.get_or_init(|| quick_cache::sync::Cache::new(16_384))
}

/// Stores a page of `entries`, keeping it decoded for the next patch.
fn put_patched_page(writer: &Writer, entries: Vec<(Vec<u8>, Entry)>) -> Result<PageRef> {
    let node = writer.put_verified_node(encode_page(&entries))?;
    let page = PageRef {
        id: node.id(),
        first_name: entries[0].0.clone(),
        entries: entries.len() as u32,
    };
    let node = node.without_body();
    patched_pages().insert(page.id, Arc::new(PatchedPage { node, entries }));
    Ok(page)
}

/// Sorted `entries` with sorted `changes` applied, counted in `patch`.
fn apply_changes(
    entries: Vec<(Vec<u8>, Entry)>,
    changes: &[(Vec<u8>, Option<Entry>)],
    patch: &mut Patch,
) -> Vec<(Vec<u8>, Entry)> {
    apply_changes_with(entries, changes, patch, |_| {})
}

/// [`apply_changes`], calling `out` for each entry of the result in order
/// with the index in `entries` of the entry of the same name, if any.
fn apply_changes_with(
    entries: Vec<(Vec<u8>, Entry)>,
    changes: &[(Vec<u8>, Option<Entry>)],
    patch: &mut Patch,
    mut out_from: impl FnMut(Option<usize>),
) -> Vec<(Vec<u8>, Entry)> {
    let mut out = Vec::with_capacity(entries.len() + changes.len());
    let mut changes = changes.iter().peekable();
    for (at, (name, entry)) in entries.into_iter().enumerate() {
        while let Some((c, _)) = changes.peek() {
            if c.as_slice() >= name.as_slice() {
                break;
            }
            if let Some((c, e)) = changes.next() {
                patch.count(c, None, e.as_ref());
                if let Some(e) = e {
                    out.push((c.clone(), e.clone()));
                    out_from(None);
                }
            }
        }
        match changes.peek() {
            Some((c, change)) if *c == name => {
                patch.count(&name, Some(&entry), change.as_ref());
                if let Some(e) = change {
                    out.push((name, e.clone()));
                    out_from(Some(at));
                }
                changes.next();
            }
            _ => {
                out.push((name, entry));
                out_from(Some(at));
            }
        }
    }
    for (c, e) in changes {
        patch.count(c, None, e.as_ref());
        if let Some(e) = e {
            out.push((c.clone(), e.clone()));
            out_from(None);
        }
    }
    out
}

/// Reads directory nodes and their pages from a store, verified.
pub struct TreeReader<'s> {
    store: &'s Store,
}

impl<'s> TreeReader<'s> {
    /// A reader over `store`.
    pub fn new(store: &'s Store) -> TreeReader<'s> {
        TreeReader { store }
    }

    /// The store read from.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// Directory node `id`.
    pub fn dir(&self, id: ChunkId) -> Result<DirNode> {
        let node = self.store.get_node(&id)?;
        decode_dir(id, &node)
    }

    /// The entries of `a` and of `b` outside the pages the two share, in
    /// name order: every name whose entry differs between the two is
    /// among them, and each name is in both lists or in the page of one
    /// only (a name in a shared page is in that page in both, since
    /// pages split a directory's names). Two versions of a large
    /// directory that differ in a few entries read a few pages.
    #[allow(clippy::type_complexity)]
    pub fn entries_differing(
        &self,
        a: &DirNode,
        b: &DirNode,
    ) -> Result<(Vec<(Vec<u8>, Entry)>, Vec<(Vec<u8>, Entry)>)> {
        let (DirLayout::Pages(pa), DirLayout::Pages(pb)) = (&a.layout, &b.layout) else {
            return Ok((self.entries(a)?, self.entries(b)?));
        };
        let ids_a: std::collections::HashSet<ChunkId> = pa.iter().map(|p| p.id).collect();
        let ids_b: std::collections::HashSet<ChunkId> = pb.iter().map(|p| p.id).collect();
        let read = |pages: &[PageRef], other: &std::collections::HashSet<ChunkId>| {
            let mut out = Vec::new();
            for page in pages.iter().filter(|p| !other.contains(&p.id)) {
                let node = self.store.get_node(&page.id)?;
                out.extend(decode_page(page.id, &node, page)?);
            }
            Ok::<_, Error>(out)
        };
        Ok((read(pa, &ids_b)?, read(pb, &ids_a)?))
    }

    /// All entries of a directory, in name order.
    pub fn entries(&self, dir: &DirNode) -> Result<Vec<(Vec<u8>, Entry)>> {
        match &dir.layout {
            DirLayout::Inline(entries) => Ok(entries.clone()),
            DirLayout::Pages(pages) => {
                let mut out = Vec::with_capacity(dir.entry_count as usize);
                for page in pages {
                    let node = self.store.get_node(&page.id)?;
                    let entries = decode_page(page.id, &node, page)?;
                    if let (Some((last, _)), Some((first, _))) = (out.last(), entries.first()) {
                        if last >= first {
                            return Err(Error::malformed(page.id, "pages overlap"));
                        }
                    }
                    out.extend(entries);
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Timestamp;

    fn file(n: u64) -> Entry {
        Entry::Inode(Inode {
            attrs: Attrs {
                mode: 0o644,
                mtime: Timestamp::new(n as i64, 0).unwrap_or_default(),
                ..Attrs::default()
            },
            nlink: 1,
            kind: InodeKind::File {
                size: 0,
                blob: None,
            },
        })
    }

    /// A patched directory has the id of the same directory stored whole,
    /// whatever the changes: inserts, removals and replacements, at the
    /// start, the end and page boundaries, growing a directory into pages
    /// and shrinking it back inline; and so does a patch of a patch (whose
    /// pages come from the cache of decoded pages, and whose names a
    /// page did not end at are not hashed again).
    #[test]
    fn patched_directory_equals_the_directory_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), cas::StoreConfig::default()).unwrap();
        let writer = store.writer("patch test");
        let reader = TreeReader::new(&store);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let attrs = Attrs {
            mode: 0o755,
            ..Attrs::default()
        };
        for round in 0..60 {
            let size = match round % 4 {
                0 => next() % 40,
                1 => next() % 600,
                _ => next() % 5000,
            } as usize;
            let mut entries: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
            for _ in 0..size {
                let n = next() % 20_000;
                entries.insert(format!("f{n:05}").into_bytes(), file(n));
            }
            let whole: Vec<_> = entries.clone().into_iter().collect();
            let mut base = store_entries(&writer, attrs.clone(), whole, b"d").unwrap();
            // The second patch starts from pages the first one wrote.
            for step in 0..2 {
                let edits = match (round + step) % 3 {
                    0 => next() % 5,
                    1 => next() % 100,
                    _ => next() % 3000,
                };
                let mut changes: BTreeMap<Vec<u8>, Option<Entry>> = BTreeMap::new();
                for _ in 0..edits {
                    let n = next() % 20_000;
                    let name = format!("f{n:05}").into_bytes();
                    let change = match next() % 3 {
                        0 => None,
                        _ => Some(file(n + 1 + next() % 7)),
                    };
                    if change.is_none() && !entries.contains_key(&name) {
                        continue;
                    }
                    changes.insert(name, change);
                }
                let new_attrs = Attrs {
                    mode: 0o700 + ((round + step) % 2) as u32,
                    ..attrs.clone()
                };
                for (name, change) in &changes {
                    match change {
                        Some(e) => entries.insert(name.clone(), e.clone()),
                        None => entries.remove(name),
                    };
                }
                let changes: Vec<_> = changes.into_iter().collect();
                let (patched, _) =
                    store_patched(&reader, &writer, base, new_attrs.clone(), &changes, b"d")
                        .unwrap();
                let whole = store_entries(
                    &writer,
                    new_attrs,
                    entries.clone().into_iter().collect(),
                    b"d",
                )
                .unwrap();
                assert_eq!(
                    patched, whole,
                    "round {round}, patch {step}: {size} entries, {edits} edits"
                );
                let read = reader.entries(&reader.dir(patched).unwrap()).unwrap();
                assert_eq!(read.len(), entries.len());
                base = patched;
            }
        }
    }
}
