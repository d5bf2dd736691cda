//! Namespace operations: lookups, attributes, creating, linking,
//! removing and renaming names, grafting trees, listing directories.

use super::*;

impl CowFs {
    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Stat> {
        if name.len() > crate::tree::MAX_NAME_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        let mut st = self.state.lock();
        let ino = match name {
            b"." => parent,
            b".." => self.dir_mut(&mut st, parent)?.parent,
            _ => self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?,
        };
        self.ready(&mut st, ino)?;
        self.stat_of(&st, ino)
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> FsResult<Stat> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        self.stat_of(&st, ino)
    }

    /// Changes attributes; a size change truncates or extends (zeros).
    ///
    /// As on a local filesystem, a change of owner or group clears setuid
    /// (and setgid on a group-executable file), and a change of owner,
    /// group or size drops a non-directory's file capabilities
    /// (`security.capability`). Whether a truncation clears setuid/setgid
    /// depends on the caller's privilege, which the frontend knows: see
    /// [`CowFs::kill_privileges`].
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Stat> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        let t = now();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Some(size) = set.size {
            match &node.kind {
                NodeKind::File(data) => {
                    if let Some(shrunk) = data.truncate(size)? {
                        self.sync_before_journal(shrunk);
                    }
                    node.attrs.mtime = t;
                }
                NodeKind::Dir(_) => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        }
        // A chmod rewrites the access ACL's owner, mask and other
        // entries, as a local filesystem does (see `acl`).
        let mut acl_changed = false;
        if let Some(mode) = set.mode {
            node.attrs.mode = mode & 0o7777;
            if let Some(value) = node.attrs.xattrs.get(acl::ACCESS) {
                if let Some(next) = acl::chmod(value, mode) {
                    acl_changed = next != *value;
                    node.attrs.xattrs.insert(acl::ACCESS.to_vec(), next);
                }
            }
        }
        if let Some(uid) = set.uid {
            node.attrs.uid = uid;
        }
        if let Some(gid) = set.gid {
            node.attrs.gid = gid;
        }
        let chown = set.uid.is_some() || set.gid.is_some();
        if chown && !matches!(node.kind, NodeKind::Dir(_)) {
            // chown clears setuid, and setgid on group-executable files.
            node.attrs.mode &= !0o4000;
            if node.attrs.mode & 0o010 != 0 {
                node.attrs.mode &= !0o2000;
            }
        }
        let resolve = |s: TimeSet| match s {
            TimeSet::Now => t,
            TimeSet::At(at) => at,
        };
        if let Some(a) = set.atime {
            node.attrs.atime = resolve(a);
        }
        if let Some(m) = set.mtime {
            node.attrs.mtime = resolve(m);
        }
        node.attrs.ctime = t;
        if let NodeKind::File(data) = &node.kind {
            if set.size.is_some() || set.mtime.is_some() {
                // Recovery adopts a data file's mtime that is newer than
                // the journal's: the data file must not keep an earlier
                // write's (or the truncation's own) time.
                data.set_upper_mtime(node.attrs.mtime);
            }
        }
        self.mark_changed(&mut st, ino);
        if chown || set.size.is_some() {
            self.drop_capability(&mut st, ino);
        }
        if acl_changed {
            if let Some(path) = self.journaling().then(|| self.path_of(&st, ino)).flatten() {
                let value = self.node(&st, ino)?.attrs.xattrs.get(acl::ACCESS).cloned();
                self.log(Record::Xattr {
                    path,
                    name: acl::ACCESS.to_vec(),
                    value,
                });
            }
        }
        if set.size.is_some() {
            self.log_data(&st, ino);
        } else {
            self.log_attrs(&st, ino);
        }
        self.stat_of(&st, ino)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let st = self.state.lock();
        match &self.node(&st, ino)?.kind {
            NodeKind::Other(InodeKind::Symlink { target }) => Ok(target.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    pub(super) fn new_attrs(
        &self,
        st: &State,
        parent: Ino,
        mode: u32,
        caller: Caller,
        is_dir: bool,
    ) -> FsResult<Attrs> {
        let parent_attrs = &self.node(st, parent)?.attrs;
        let mut mode = mode & 0o7777;
        let mut gid = caller.gid;
        if parent_attrs.mode & 0o2000 != 0 {
            gid = parent_attrs.gid;
            if is_dir {
                mode |= 0o2000;
            }
        }
        let t = now();
        Ok(Attrs {
            mode,
            uid: caller.uid,
            gid,
            atime: t,
            mtime: t,
            ctime: t,
            xattrs: BTreeMap::new(),
        })
    }

    pub(super) fn create_node(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        caller: Caller,
        make: impl FnOnce(&Self, Ino) -> NodeKind,
    ) -> FsResult<Stat> {
        check_name(name)?;
        let mut st = self.state.lock();
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        // A recovery replays what was made within the quota then.
        if self.journaling() && st.made.len() as u64 >= self.inode_quota {
            return Err(Errno::ENOSPC);
        }
        let ino = st.next_ino;
        let kind = make(self, ino);
        let is_dir = matches!(kind, NodeKind::Dir(_));
        let attrs = self.new_attrs(&st, parent, mode, caller, is_dir)?;
        let t = attrs.ctime;
        let record = self.journaling().then(|| {
            let kind = match &kind {
                NodeKind::File(data) => NewKind::File {
                    file: data.file_name(),
                },
                NodeKind::Dir(_) => NewKind::Dir,
                NodeKind::Other(InodeKind::Symlink { target }) => NewKind::Symlink {
                    target: target.clone(),
                },
                NodeKind::Other(InodeKind::CharDevice { rdev }) => {
                    NewKind::CharDevice { rdev: *rdev }
                }
                NodeKind::Other(InodeKind::BlockDevice { rdev }) => {
                    NewKind::BlockDevice { rdev: *rdev }
                }
                NodeKind::Other(InodeKind::Socket) => NewKind::Socket,
                NodeKind::Other(_) => NewKind::Fifo,
            };
            (kind, JAttrs::from(&attrs))
        });
        let new = self.add_node(
            &mut st,
            attrs,
            if is_dir { 2 } else { 1 },
            kind,
            (parent, name.to_vec()),
        );
        debug_assert_eq!(new, ino);
        st.made.insert(ino);
        let dir = self.dir_mut(&mut st, parent)?;
        dir.insert(name.to_vec(), ino);
        if is_dir {
            dir.subdirs += 1;
            if let Some(p) = st.nodes.get_mut(&parent) {
                p.nlink += 1;
            }
        }
        self.touch_dir_at(&mut st, parent, t);
        if let (Some((kind, attrs)), Some(path)) = (record, self.child_path(&st, parent, name)) {
            self.log(Record::Create { path, kind, attrs });
        }
        self.stat_of(&st, ino)
    }

    /// Creates a regular file (and counts it open).
    pub fn create(&self, parent: Ino, name: &[u8], mode: u32, caller: Caller) -> FsResult<Stat> {
        let stat = self.create_node(parent, name, mode, caller, |fs, ino| {
            NodeKind::File(Arc::new(FileData::empty(
                fs.data_dir.clone(),
                fs.data_name_for(ino),
                fs.files.clone(),
            )))
        })?;
        self.open(stat.ino, false)?;
        Ok(stat)
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, caller: Caller) -> FsResult<Stat> {
        self.create_node(parent, name, mode, caller, |_, _| {
            NodeKind::Dir(DirState::new(parent))
        })
    }

    /// Creates a device node, fifo, socket or empty regular file.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> FsResult<Stat> {
        let inode = match kind {
            FileKind::CharDevice => InodeKind::CharDevice { rdev },
            FileKind::BlockDevice => InodeKind::BlockDevice { rdev },
            FileKind::Fifo => InodeKind::Fifo,
            FileKind::Socket => InodeKind::Socket,
            FileKind::File => {
                return self.create_node(parent, name, mode, caller, |fs, ino| {
                    NodeKind::File(Arc::new(FileData::empty(
                        fs.data_dir.clone(),
                        fs.data_name_for(ino),
                        fs.files.clone(),
                    )))
                })
            }
            _ => return Err(Errno::EINVAL),
        };
        self.create_node(parent, name, mode, caller, |_, _| NodeKind::Other(inode))
    }

    /// Creates a symlink.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> FsResult<Stat> {
        if target.is_empty() || target.contains(&0) {
            return Err(Errno::EINVAL);
        }
        if target.len() > MAX_PATH_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        let target = target.to_vec();
        self.create_node(parent, name, 0o777, caller, |_, _| {
            NodeKind::Other(InodeKind::Symlink { target })
        })
    }

    /// Gives `ino` a further name.
    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<Stat> {
        check_name(name)?;
        let mut st = self.state.lock();
        if matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::EPERM);
        }
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let from = self.path_of(&st, ino);
        let t = now();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.nlink >= 65_000 {
            return Err(Errno::EMLINK);
        }
        node.nlink += 1;
        node.attrs.ctime = t;
        // Its first name's entry shows the new count too.
        st.all_changed_at = Some(st.captures);
        self.add_name(&mut st, ino, parent, name);
        self.dir_mut(&mut st, parent)?.insert(name.to_vec(), ino);
        self.touch_dir_at(&mut st, parent, t);
        if let (Some(from), Some(to)) = (from, self.child_path(&st, parent, name)) {
            self.log(Record::Link {
                from,
                to,
                time: t.into(),
            });
        }
        self.stat_of(&st, ino)
    }

    /// Removes one link of `ino`, whose name `name` in `parent` is already
    /// gone from the directory.
    pub(super) fn drop_link(
        &self,
        st: &mut State,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        t: Timestamp,
    ) {
        let mut gone = None;
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.nlink = node.nlink.saturating_sub(1);
            node.attrs.ctime = t;
            if node.nlink > 0 {
                // Its other names' entries show the new count.
                st.all_changed_at = Some(st.captures);
            }
            let gone_now = node.nlink == 0 && node.opens == 0;
            self.remove_name(st, ino, parent, name);
            if gone_now {
                gone = st.remove_node(ino);
            }
        }
        if let Some(node) = gone {
            self.locks.lock().forget(ino);
            if let NodeKind::File(data) = node.kind {
                data.discard();
            }
        }
    }

    /// Removes a non-directory name.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        let ino = self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?;
        if matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        let path = self.child_path(&st, parent, name);
        let t = now();
        self.dir_mut(&mut st, parent)?.remove(name);
        self.touch_dir_at(&mut st, parent, t);
        self.drop_link(&mut st, ino, parent, name, t);
        if let Some(path) = path {
            self.log(Record::Remove {
                path,
                time: t.into(),
            });
        }
        Ok(())
    }

    /// Places stored tree `tree` at `path` as a directory of this mount
    /// (copy-on-write like the rest: changes stay in the upper layer). The
    /// parent must exist; `path` must be absent or an empty directory,
    /// which it replaces. Returns the parent's inode and the new one.
    pub fn graft(&self, path: &[u8], tree: ChunkId) -> FsResult<(Ino, Ino)> {
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        let (name, dirs) = parts.split_last().ok_or(Errno::EINVAL)?;
        check_name(name)?;
        let root = TreeReader::new(&self.store)
            .dir(tree)
            .map_err(|e| self.eio(e))?;
        let mut parent = ROOT_INO;
        {
            let mut st = self.state.lock();
            for part in dirs {
                parent = self.child(&mut st, parent, part)?.ok_or(Errno::ENOENT)?;
            }
            if !matches!(self.node(&st, parent)?.kind, NodeKind::Dir(_)) {
                return Err(Errno::ENOTDIR);
            }
        }
        match self.rmdir(parent, name) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::ENOTDIR) => return Err(Errno::EEXIST),
            Err(e) => return Err(e),
        }
        let mut st = self.state.lock();
        if self.child(&mut st, parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let mut dir = DirState::new(parent);
        dir.unread = Some(tree);
        dir.lower_id = Some(tree);
        let ino = st.next_ino;
        dir.origin = Some(Origin {
            root: ino,
            path: Vec::new(),
        });
        st.lower_dirs.insert((ino, Vec::new()), ino);
        st.tree_roots.insert(ino, tree);
        let t = now();
        let added = self.add_node(
            &mut st,
            root.attrs,
            2,
            NodeKind::Dir(dir),
            (parent, name.to_vec()),
        );
        debug_assert_eq!(added, ino);
        let pdir = self.dir_mut(&mut st, parent)?;
        pdir.insert(name.to_vec(), ino);
        pdir.subdirs += 1;
        if let Some(p) = st.nodes.get_mut(&parent) {
            p.nlink += 1;
        }
        self.touch_dir_at(&mut st, parent, t);
        // Attributes and link count as for any lower directory.
        self.ready(&mut st, ino)?;
        if let Some(path) = self.child_path(&st, parent, name) {
            self.log(Record::Graft {
                path,
                tree,
                time: t.into(),
            });
        }
        Ok((parent, ino))
    }

    pub(super) fn is_empty_dir(&self, st: &mut State, ino: Ino) -> FsResult<bool> {
        self.load_dir(st, ino)?;
        Ok(self.dir_mut(st, ino)?.by_name.is_empty())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        let mut st = self.state.lock();
        let ino = self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?;
        if !matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_)) {
            return Err(Errno::ENOTDIR);
        }
        if !self.is_empty_dir(&mut st, ino)? {
            return Err(Errno::ENOTEMPTY);
        }
        let path = self.child_path(&st, parent, name);
        let t = now();
        let dir = self.dir_mut(&mut st, parent)?;
        dir.remove(name);
        dir.subdirs = dir.subdirs.saturating_sub(1);
        if let Some(p) = st.nodes.get_mut(&parent) {
            p.nlink = p.nlink.saturating_sub(1);
        }
        self.touch_dir_at(&mut st, parent, t);
        st.remove_node(ino);
        if let Some(path) = path {
            self.log(Record::Remove {
                path,
                time: t.into(),
            });
        }
        Ok(())
    }

    /// Is `ancestor` on the path from `ino` up to the root?
    pub(super) fn is_ancestor(&self, st: &State, ancestor: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match st.nodes.get(&ino).map(|n| &n.kind) {
                Some(NodeKind::Dir(d)) => ino = d.parent,
                _ => return false,
            }
        }
    }

    /// Renames, with `noreplace` and `exchange` as `renameat2`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        check_name(new_name)?;
        if flags.noreplace && flags.exchange {
            return Err(Errno::EINVAL);
        }
        let mut st = self.state.lock();
        let ino = self.child(&mut st, parent, name)?.ok_or(Errno::ENOENT)?;
        let target = self.child(&mut st, new_parent, new_name)?;
        self.ready(&mut st, ino)?;
        if let Some(other) = target {
            self.ready(&mut st, other)?;
        }
        let moving_dir = matches!(self.node(&st, ino)?.kind, NodeKind::Dir(_));
        if target == Some(ino) {
            return Ok(()); // same inode: nothing to do
        }
        if moving_dir && self.is_ancestor(&st, ino, new_parent) {
            return Err(Errno::EINVAL);
        }
        let t = now();
        let record = if self.journaling() {
            match (
                self.child_path(&st, parent, name),
                self.child_path(&st, new_parent, new_name),
            ) {
                (Some(from), Some(to)) => Some(Record::Rename {
                    from,
                    to,
                    noreplace: flags.noreplace,
                    exchange: flags.exchange,
                    time: t.into(),
                }),
                _ => None,
            }
        } else {
            None
        };
        if flags.exchange {
            let other = target.ok_or(Errno::ENOENT)?;
            let other_dir = matches!(self.node(&st, other)?.kind, NodeKind::Dir(_));
            if other_dir && self.is_ancestor(&st, other, parent) {
                return Err(Errno::EINVAL);
            }
            self.dir_mut(&mut st, parent)?.insert(name.to_vec(), other);
            self.dir_mut(&mut st, new_parent)?
                .insert(new_name.to_vec(), ino);
            if moving_dir != other_dir && parent != new_parent {
                self.adjust_subdirs(&mut st, parent, if other_dir { 1 } else { -1 });
                self.adjust_subdirs(&mut st, new_parent, if moving_dir { 1 } else { -1 });
            }
            self.set_parent(&mut st, ino, new_parent);
            self.set_parent(&mut st, other, parent);
            self.move_name(&mut st, ino, (parent, name), (new_parent, new_name));
            self.move_name(&mut st, other, (new_parent, new_name), (parent, name));
            self.touch_dir_at(&mut st, parent, t);
            self.touch_dir_at(&mut st, new_parent, t);
            self.mark_changed(&mut st, ino);
            self.mark_changed(&mut st, other);
            if let Some(record) = record {
                self.log(record);
            }
            return Ok(());
        }
        if let Some(existing) = target {
            if flags.noreplace {
                return Err(Errno::EEXIST);
            }
            let existing_dir = matches!(self.node(&st, existing)?.kind, NodeKind::Dir(_));
            match (moving_dir, existing_dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => {
                    if !self.is_empty_dir(&mut st, existing)? {
                        return Err(Errno::ENOTEMPTY);
                    }
                    self.dir_mut(&mut st, new_parent)?.remove(new_name);
                    self.adjust_subdirs(&mut st, new_parent, -1);
                    st.remove_node(existing);
                }
                (false, false) => {
                    self.dir_mut(&mut st, new_parent)?.remove(new_name);
                    self.drop_link(&mut st, existing, new_parent, new_name, t);
                }
            }
        }
        self.dir_mut(&mut st, parent)?.remove(name);
        self.dir_mut(&mut st, new_parent)?
            .insert(new_name.to_vec(), ino);
        if moving_dir && parent != new_parent {
            self.adjust_subdirs(&mut st, parent, -1);
            self.adjust_subdirs(&mut st, new_parent, 1);
            self.set_parent(&mut st, ino, new_parent);
        }
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.attrs.ctime = t;
        }
        self.move_name(&mut st, ino, (parent, name), (new_parent, new_name));
        self.touch_dir_at(&mut st, parent, t);
        self.touch_dir_at(&mut st, new_parent, t);
        self.mark_changed(&mut st, ino);
        if let Some(record) = record {
            self.log(record);
        }
        Ok(())
    }

    pub(super) fn adjust_subdirs(&self, st: &mut State, dir: Ino, delta: i32) {
        if let Some(node) = st.nodes.get_mut(&dir) {
            if let NodeKind::Dir(d) = &mut node.kind {
                d.subdirs = d.subdirs.saturating_add_signed(delta);
                node.nlink = 2 + d.subdirs;
            }
        }
    }

    pub(super) fn set_parent(&self, st: &mut State, ino: Ino, parent: Ino) {
        if let Some(NodeKind::Dir(d)) = st.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            d.parent = parent;
        }
    }

    /// Entries of directory `ino` after `offset` (0 = from the start).
    pub fn readdir(&self, ino: Ino, offset: u64) -> FsResult<Vec<DirEntryOut>> {
        let mut out = Vec::new();
        self.readdir_each(ino, offset, |entry| {
            out.push(DirEntryOut {
                offset: entry.offset,
                ino: entry.ino,
                kind: entry.kind,
                name: entry.name.to_vec(),
            });
            false
        })?;
        Ok(out)
    }

    /// Calls `emit` with each entry of directory `ino` after `offset`, in
    /// offset order, until it returns `true` (its buffer is full): a reply
    /// costs what it holds, not the size of the directory.
    pub fn readdir_each(
        &self,
        ino: Ino,
        offset: u64,
        mut emit: impl FnMut(DirEntryRef<'_>) -> bool,
    ) -> FsResult<()> {
        let mut st = self.state.lock();
        self.load_dir(&mut st, ino)?;
        let dir = match &self.node(&st, ino)?.kind {
            NodeKind::Dir(d) => d,
            _ => return Err(Errno::ENOTDIR),
        };
        if offset < 1
            && emit(DirEntryRef {
                offset: 1,
                ino,
                kind: FileKind::Dir,
                name: b".",
            })
        {
            return Ok(());
        }
        if offset < 2
            && emit(DirEntryRef {
                offset: 2,
                ino: dir.parent,
                kind: FileKind::Dir,
                name: b"..",
            })
        {
            return Ok(());
        }
        for (&off, name) in dir.by_offset.range(offset.max(2) + 1..) {
            let Some(&(child, _)) = dir.by_name.get(name) else {
                continue;
            };
            let kind = st
                .nodes
                .get(&child)
                .map(|n| kind_of(&n.kind))
                .unwrap_or(FileKind::File);
            if emit(DirEntryRef {
                offset: off,
                ino: child,
                kind,
                name,
            }) {
                break;
            }
        }
        Ok(())
    }

    /// As [`CowFs::readdir_each`], with each entry's attributes (a
    /// READDIRPLUS reply: the kernel then needs no LOOKUP per entry). A
    /// lower subdirectory's own entries are read here, as a lookup would
    /// (its link count needs them). Entries are taken in batches, so the
    /// lock is not held across the directory.
    pub fn readdirplus_each(
        &self,
        ino: Ino,
        offset: u64,
        mut emit: impl FnMut(DirEntryRef<'_>, &Stat) -> bool,
    ) -> FsResult<()> {
        /// Entries taken per batch (a reply page holds about 25).
        const BATCH: usize = 32;
        let mut st = self.state.lock();
        self.load_dir(&mut st, ino)?;
        let mut at = offset;
        loop {
            let dir = match &self.node(&st, ino)?.kind {
                NodeKind::Dir(d) => d,
                _ => return Err(Errno::ENOTDIR),
            };
            let mut batch: Vec<(u64, Ino, Vec<u8>)> = Vec::with_capacity(BATCH);
            if at < 1 {
                batch.push((1, ino, b".".to_vec()));
            }
            if at < 2 {
                batch.push((2, dir.parent, b"..".to_vec()));
            }
            for (&off, name) in dir.by_offset.range(at.max(2) + 1..) {
                if batch.len() >= BATCH {
                    break;
                }
                if let Some(&(child, _)) = dir.by_name.get(name) {
                    batch.push((off, child, name.to_vec()));
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            for (off, child, name) in &batch {
                self.ready(&mut st, *child)?;
                let stat = self.stat_of(&st, *child)?;
                let entry = DirEntryRef {
                    offset: *off,
                    ino: *child,
                    kind: stat.kind,
                    name,
                };
                if emit(entry, &stat) {
                    return Ok(());
                }
                at = *off;
            }
        }
    }
}
