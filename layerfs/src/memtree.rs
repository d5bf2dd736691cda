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

use cas::{ChunkId, Store, Writer};

use crate::error::{Error, Result};
use crate::tree::{
    decode_dir, decode_page, encode_dir, encode_page, page_ranges, validate_name, Attrs, DirLayout,
    DirNode, Entry, Inode, InodeKind, MAX_PATH_LEN,
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
