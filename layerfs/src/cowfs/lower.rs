//! Loading the lower (image) tree: directories are read from their tree
//! nodes the first time they are needed, and paths are resolved in it.

use super::*;

impl CowFs {
    /// Reads the node of lower directory `ino` if only its id is known yet,
    /// filling in its attributes. Every operation calls this for the
    /// inodes it is given before it reads or changes their attributes, so
    /// listing a directory costs one read, not one per subdirectory.
    pub(super) fn ready(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        let unread = match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(dir)) => dir.unread.take(),
            Some(_) => return Ok(()),
            None => return Err(Errno::ENOENT),
        };
        let Some(id) = unread else {
            return Ok(());
        };
        let node = match TreeReader::new(&self.store).dir(id) {
            Ok(node) => node,
            Err(e) => {
                if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                    dir.unread = Some(id);
                }
                return Err(self.eio(e));
            }
        };
        // Its link count (2 + subdirectories) is known once its entries
        // are: a large directory's pages are read here.
        let subdirs = match self.subdirs_of(&node) {
            Ok(n) => n,
            Err(e) => {
                if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                    dir.unread = Some(id);
                }
                return Err(e);
            }
        };
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.nlink = 2 + subdirs as u32;
            n.attrs = node.attrs.clone();
            if let NodeKind::Dir(dir) = &mut n.kind {
                dir.pending = Some(Box::new(node));
            }
        }
        Ok(())
    }

    /// How many subdirectories a stored directory has (a large directory's
    /// pages are read).
    pub(super) fn subdirs_of(&self, node: &DirNode) -> FsResult<usize> {
        let count = |entries: &[(Vec<u8>, Entry)]| {
            entries
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Dir(_)))
                .count()
        };
        match &node.layout {
            crate::tree::DirLayout::Inline(entries) => Ok(count(entries)),
            crate::tree::DirLayout::Pages(_) => TreeReader::new(&self.store)
                .entries(node)
                .map(|entries| count(&entries))
                .map_err(|e| self.eio(e)),
        }
    }

    /// Instantiates the entries of lower directory `ino` if not done yet.
    pub(super) fn load_dir(&self, st: &mut State, ino: Ino) -> FsResult<()> {
        self.ready(st, ino)?;
        let pending = match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(dir)) => dir.pending.take(),
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        };
        let Some(pending) = pending else {
            return Ok(());
        };
        let reader = TreeReader::new(&self.store);
        let entries = reader.entries(&pending).map_err(|e| self.eio(e))?;
        // A directory with no origin is a stored subtree without hard
        // links (a capture took it whole): nothing in it is registered
        // for hard-link resolution.
        let origin = match st.nodes.get(&ino).map(|n| &n.kind) {
            Some(NodeKind::Dir(dir)) => dir.origin.clone(),
            _ => None,
        };
        let child_origin = |name: &[u8]| {
            origin.as_ref().map(|origin| {
                let mut path = origin.path.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                (origin.root, path)
            })
        };
        let mut linked = false;
        for (name, entry) in entries {
            linked |= match &entry {
                Entry::HardLink { .. } => true,
                Entry::Inode(inode) => inode.nlink > 1,
                Entry::Dir(_) => false,
            };
            let child = match entry {
                Entry::Dir(id) => {
                    let mut dir = DirState::new(ino);
                    dir.unread = Some(id);
                    dir.lower_id = Some(id);
                    if let Some((root, path)) = child_origin(&name) {
                        st.lower_dirs.insert((root, path.clone()), st.next_ino);
                        dir.origin = Some(Origin { root, path });
                    }
                    let child = self.add_node(
                        st,
                        Attrs::default(),
                        2,
                        NodeKind::Dir(dir),
                        (ino, name.clone()),
                    );
                    if let Some(NodeKind::Dir(parent)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind)
                    {
                        parent.subdirs += 1;
                    }
                    child
                }
                Entry::Inode(inode) => {
                    let kind = self.lower_kind(st, inode.kind);
                    let child =
                        self.add_node(st, inode.attrs, inode.nlink, kind, (ino, name.clone()));
                    if inode.nlink > 1 {
                        if let Some(key) = child_origin(&name) {
                            st.lower_paths.insert(key, child);
                        }
                    }
                    child
                }
                Entry::HardLink { target } => {
                    let Some(root) = origin.as_ref().map(|o| o.root) else {
                        return Err(self.eio(format!(
                            "hard link to {} in a directory taken whole by a capture",
                            String::from_utf8_lossy(&target)
                        )));
                    };
                    let target = match st.lower_paths.get(&(root, target.clone())) {
                        Some(&ino) => ino,
                        None => {
                            // The target's directory has not been loaded
                            // yet: walk to it.
                            self.resolve_lower(st, root, &target)?
                        }
                    };
                    self.add_name(st, target, ino, &name);
                    target
                }
            };
            if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
                dir.insert(name, child);
            }
        }
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.nlink = 2 + match &node.kind {
                NodeKind::Dir(d) => d.subdirs,
                _ => 0,
            };
            if let NodeKind::Dir(d) = &mut node.kind {
                // The entries are the lower node's: none is an edit.
                d.edits = None;
                d.lower_linked = linked;
            }
        }
        Ok(())
    }

    /// The node kind of a stored inode about to be added as inode
    /// `st.next_ino`.
    pub(super) fn lower_kind(&self, st: &State, kind: InodeKind) -> NodeKind {
        match kind {
            InodeKind::File { size, blob } => NodeKind::File(Arc::new(FileData::lower(
                size,
                blob,
                self.data_dir.clone(),
                self.data_name_for(st.next_ino),
                self.files.clone(),
            ))),
            other => NodeKind::Other(other),
        }
    }

    /// Finds a lower hard-link target by its path in the tree rooted at
    /// `root`: through the directories of that path as they came from the
    /// tree (wherever they are now), loading them as needed.
    pub(super) fn resolve_lower(&self, st: &mut State, root: Ino, path: &[u8]) -> FsResult<Ino> {
        let missing = |fs: &Self| {
            fs.eio(format!(
                "hard-link target {} missing",
                String::from_utf8_lossy(path)
            ))
        };
        let (dir_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let mut at = root;
        let mut prefix: Vec<u8> = Vec::new();
        for part in dir_path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(part);
            at = match st.lower_dirs.get(&(root, prefix.clone())) {
                Some(&ino) if st.nodes.contains_key(&ino) => ino,
                _ => {
                    self.load_dir(st, at)?;
                    match st.lower_dirs.get(&(root, prefix.clone())) {
                        Some(&ino) if st.nodes.contains_key(&ino) => ino,
                        _ => return Err(missing(self)),
                    }
                }
            };
        }
        self.load_dir(st, at)?;
        if let Some(&ino) = st.lower_paths.get(&(root, path.to_vec())) {
            if st.nodes.contains_key(&ino) {
                return Ok(ino);
            }
        }
        self.dir_mut(st, at)?.get(name).ok_or_else(|| missing(self))
    }
}
