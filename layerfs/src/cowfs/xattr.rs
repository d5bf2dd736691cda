//! Extended attributes of every kind of inode.

use super::*;

impl CowFs {
    /// Extended attribute `name` of `ino`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        self.node(&st, ino)?
            .attrs
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::ENODATA)
    }

    /// Names of `ino`'s extended attributes.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        Ok(self.node(&st, ino)?.attrs.xattrs.keys().cloned().collect())
    }

    /// Sets an extended attribute.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> FsResult<()> {
        if name.is_empty() || name.len() > 255 || name.contains(&0) {
            return Err(Errno::ERANGE);
        }
        if value.len() > crate::tree::MAX_XATTR_VALUE {
            return Err(Errno::Errno2BIG);
        }
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let exists = node.attrs.xattrs.contains_key(name);
        match (mode, exists) {
            (XattrMode::Create, true) => return Err(Errno::EEXIST),
            (XattrMode::Replace, false) => return Err(Errno::ENODATA),
            _ => {}
        }
        // An access ACL sets the mode (and one the mode says all of is
        // not kept); a default ACL belongs to directories (see `acl`).
        let (new_mode, stored) = match name {
            acl::ACCESS => acl::set_access(node.attrs.mode, value)?,
            acl::DEFAULT if !matches!(node.kind, NodeKind::Dir(_)) => {
                return Err(Errno(libc::EACCES))
            }
            acl::DEFAULT => (
                acl::check(value).map(|_| node.attrs.mode)?,
                Some(value.to_vec()),
            ),
            _ => (node.attrs.mode, Some(value.to_vec())),
        };
        let mut next = node.attrs.xattrs.clone();
        match &stored {
            Some(value) => next.insert(name.to_vec(), value.clone()),
            None => next.remove(name),
        };
        if crate::tree::validate_xattrs(&next).is_err() {
            return Err(Errno::ENOSPC);
        }
        node.attrs.xattrs = next;
        node.attrs.mode = new_mode;
        node.attrs.ctime = now();
        self.mark_changed(&mut st, ino);
        if let Some(path) = self.journaling().then(|| self.path_of(&st, ino)).flatten() {
            if stored.is_some() || exists {
                self.log(Record::Xattr {
                    path,
                    name: name.to_vec(),
                    value: stored,
                });
            }
            self.log_attrs(&st, ino);
        }
        Ok(())
    }

    /// What a write, truncation or change of owner by an unprivileged
    /// caller does to a regular file's privileges (the kernel leaves it to
    /// the FUSE server once `FUSE_HANDLE_KILLPRIV_V2` is agreed): drops
    /// `security.capability` always and, when `suid_sgid`, setuid and (on a
    /// group-executable file) setgid. Returns whether anything changed;
    /// costs one lookup when nothing does.
    pub fn kill_privileges(&self, ino: Ino, suid_sgid: bool) -> FsResult<bool> {
        let mut st = self.state.lock();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if !matches!(node.kind, NodeKind::File(_)) {
            return Ok(false);
        }
        let mut mode = node.attrs.mode;
        if suid_sgid {
            mode &= !0o4000;
            if mode & 0o010 != 0 {
                mode &= !0o2000;
            }
        }
        if mode == node.attrs.mode && !node.attrs.xattrs.contains_key(CAPABILITY_XATTR) {
            return Ok(false);
        }
        node.attrs.mode = mode;
        node.attrs.ctime = now();
        self.drop_capability(&mut st, ino);
        self.mark_changed(&mut st, ino);
        self.log_attrs(&st, ino);
        Ok(true)
    }

    /// Drops a non-directory's file capabilities (journaled), as a write,
    /// a truncation or a change of owner does; whether it had any. The
    /// caller journals the node's attributes after.
    pub(super) fn drop_capability(&self, st: &mut State, ino: Ino) -> bool {
        let Some(node) = st.nodes.get_mut(&ino) else {
            return false;
        };
        if matches!(node.kind, NodeKind::Dir(_))
            || node.attrs.xattrs.remove(CAPABILITY_XATTR).is_none()
        {
            return false;
        }
        if let Some(path) = self.journaling().then(|| self.path_of(st, ino)).flatten() {
            self.log(Record::Xattr {
                path,
                name: CAPABILITY_XATTR.to_vec(),
                value: None,
            });
        }
        true
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        let mut st = self.state.lock();
        self.ready(&mut st, ino)?;
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.attrs.xattrs.remove(name).ok_or(Errno::ENODATA)?;
        node.attrs.ctime = now();
        self.mark_changed(&mut st, ino);
        if let Some(path) = self.journaling().then(|| self.path_of(&st, ino)).flatten() {
            self.log(Record::Xattr {
                path,
                name: name.to_vec(),
                value: None,
            });
            self.log_attrs(&st, ino);
        }
        Ok(())
    }
}
