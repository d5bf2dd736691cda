//! The namespace's bookkeeping: inodes and their names, the paths the
//! journal records, and what a change must log or mark for snapshots.

use super::*;

impl CowFs {
    /// The name of `ino`'s first upper data file in this session.
    pub(super) fn data_name_for(&self, ino: Ino) -> String {
        format!("{}-{ino}", self.epoch)
    }

    pub(super) fn add_node(
        &self,
        st: &mut State,
        attrs: Attrs,
        nlink: u32,
        kind: NodeKind,
        link: (Ino, Vec<u8>),
    ) -> Ino {
        let ino = st.next_ino;
        st.next_ino += 1;
        if nlink > 1 && !matches!(kind, NodeKind::Dir(_)) {
            st.multi_named = true;
        }
        st.nodes.insert(
            ino,
            Node {
                attrs,
                nlink,
                kind,
                opens: 0,
                link,
                more_links: Vec::new(),
            },
        );
        ino
    }

    pub(super) fn log(&self, record: Record) {
        if let Some(journal) = self.journal.get() {
            journal.append(&record);
        }
    }

    pub(super) fn journaling(&self) -> bool {
        self.journal.get().is_some()
    }

    /// The current path of `ino` from the root (`Some(empty)` for the
    /// root), or `None` when it has no name (removed but open).
    pub(super) fn path_of(&self, st: &State, ino: Ino) -> Option<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        let mut steps = 0;
        while at != ROOT_INO {
            let node = st.nodes.get(&at)?;
            let (parent, name) = match (&node.link, node.more_links.first()) {
                ((0, _), Some((parent, name))) => (*parent, name.as_slice()),
                ((0, _), None) => return None,
                ((parent, name), _) => (*parent, name.as_slice()),
            };
            parts.push(name);
            at = parent;
            steps += 1;
            if steps > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join(&b'/'))
    }

    /// Records that `ino` has a further name, `name` in `parent`.
    pub(super) fn add_name(&self, st: &mut State, ino: Ino, parent: Ino, name: &[u8]) {
        st.multi_named = true;
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        let known = |(p, n): &(Ino, Vec<u8>)| *p == parent && n == name;
        if node.link.0 == 0 {
            node.link = (parent, name.to_vec());
        } else if !known(&node.link) && !node.more_links.iter().any(known) {
            node.more_links.push((parent, name.to_vec()));
        }
    }

    /// Records that `ino`'s name `name` in `parent` is gone.
    pub(super) fn remove_name(&self, st: &mut State, ino: Ino, parent: Ino, name: &[u8]) {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        if node.link.0 == parent && node.link.1 == name {
            node.link = node.more_links.pop().unwrap_or((0, Vec::new()));
        } else {
            node.more_links
                .retain(|(p, n)| !(*p == parent && n == name));
        }
    }

    /// Records that `ino`'s name `from` is now `to` (a rename).
    pub(super) fn move_name(&self, st: &mut State, ino: Ino, from: (Ino, &[u8]), to: (Ino, &[u8])) {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return;
        };
        let to = (to.0, to.1.to_vec());
        if node.link.0 == from.0 && node.link.1 == from.1 {
            node.link = to;
        } else if let Some(other) = node
            .more_links
            .iter_mut()
            .find(|(p, n)| *p == from.0 && n == from.1)
        {
            *other = to;
        } else {
            node.link = to;
        }
    }

    pub(super) fn child_path(&self, st: &State, parent: Ino, name: &[u8]) -> Option<Vec<u8>> {
        let mut path = self.path_of(st, parent)?;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        Some(path)
    }

    /// Journals `ino`'s attributes.
    pub(super) fn log_attrs(&self, st: &State, ino: Ino) {
        if !self.journaling() {
            return;
        }
        if let (Some(path), Some(node)) = (self.path_of(st, ino), st.nodes.get(&ino)) {
            self.log(Record::Attrs {
                path,
                attrs: JAttrs::from(&node.attrs),
            });
        }
    }

    /// Journals a file's contents layout (and attributes).
    pub(super) fn log_data(&self, st: &State, ino: Ino) {
        if !self.journaling() {
            return;
        }
        let Some(node) = st.nodes.get(&ino) else {
            return;
        };
        let NodeKind::File(data) = &node.kind else {
            return;
        };
        data.take_dirty();
        let Some(path) = self.path_of(st, ino) else {
            return;
        };
        let (size, lower_limit, present) = data.layout();
        self.log(Record::FileState {
            path,
            file: data.file_name(),
            base: file::journal_base(&data.base(), &self.data_dir),
            size,
            lower_limit,
            present,
            attrs: JAttrs::from(&node.attrs),
        });
    }

    /// Makes everything journaled so far durable.
    /// Registers a data file cut shorter, to be synced before the journal
    /// records its new size durably.
    pub(super) fn sync_before_journal(&self, file: Arc<datafile::DataFile>) {
        if let Some(journal) = self.journal.get() {
            journal.sync_first(file);
        }
    }

    pub(super) fn sync_journal(&self) -> FsResult<()> {
        match self.journal.get() {
            Some(journal) => journal.sync().map_err(|e| self.eio(e)),
            None => Ok(()),
        }
    }

    pub(super) fn node<'s>(&self, st: &'s State, ino: Ino) -> FsResult<&'s Node> {
        st.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn stat_of(&self, st: &State, ino: Ino) -> FsResult<Stat> {
        let node = self.node(st, ino)?;
        let (size, rdev) = match &node.kind {
            NodeKind::File(data) => (data.size(), 0),
            NodeKind::Dir(_) => (4096, 0),
            NodeKind::Other(InodeKind::Symlink { target }) => (target.len() as u64, 0),
            NodeKind::Other(InodeKind::CharDevice { rdev })
            | NodeKind::Other(InodeKind::BlockDevice { rdev }) => (0, *rdev),
            NodeKind::Other(_) => (0, 0),
        };
        Ok(Stat {
            ino,
            kind: kind_of(&node.kind),
            perm: node.attrs.mode & 0o7777,
            nlink: node.nlink,
            uid: node.attrs.uid,
            gid: node.attrs.gid,
            size,
            blocks: size.div_ceil(512),
            atime: node.attrs.atime,
            mtime: node.attrs.mtime,
            ctime: node.attrs.ctime,
            rdev,
        })
    }

    pub(super) fn dir_mut<'s>(&self, st: &'s mut State, ino: Ino) -> FsResult<&'s mut DirState> {
        match st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(dir)) => Ok(dir),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    pub(super) fn child(&self, st: &mut State, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        self.load_dir(st, parent)?;
        Ok(self.dir_mut(st, parent)?.get(name))
    }

    pub(super) fn touch_dir_at(&self, st: &mut State, ino: Ino, t: Timestamp) {
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.attrs.mtime = t;
            node.attrs.ctime = t;
        }
        self.mark_changed(st, ino);
    }

    /// Records that `ino` changed: its directory (itself, for a directory)
    /// and every ancestor are marked, and its name in its directory (and
    /// each directory's name in its parent) recorded as an edit. An inode
    /// with several names marks the whole mount (its other directories
    /// are not known here).
    pub(super) fn mark_changed(&self, st: &mut State, ino: Ino) {
        let Some(node) = st.nodes.get(&ino) else {
            return;
        };
        let now = st.captures;
        let mut at = match &node.kind {
            NodeKind::Dir(_) => ino,
            _ if node.nlink > 1 || node.link.0 == 0 => {
                st.all_changed_at = Some(st.captures);
                return;
            }
            _ => {
                let (parent, name) = node.link.clone();
                if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&parent).map(|n| &mut n.kind) {
                    dir.edited(&name, now);
                }
                parent
            }
        };
        for _ in 0..=MAX_PATH_LEN {
            if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&at).map(|n| &mut n.kind) {
                dir.stamp(now);
            }
            // A directory marked since the last capture has its ancestors
            // marked too (and its name recorded in its parent).
            if st.changed.insert(at, now) == Some(now) || at == ROOT_INO {
                return;
            }
            let Some(node) = st.nodes.get(&at) else {
                return;
            };
            let (parent, name) = match &node.kind {
                NodeKind::Dir(dir) => (dir.parent, node.link.1.clone()),
                _ => return,
            };
            if let Some(NodeKind::Dir(dir)) = st.nodes.get_mut(&parent).map(|n| &mut n.kind) {
                dir.edited(&name, now);
            }
            at = parent;
        }
    }
}
