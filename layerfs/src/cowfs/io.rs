//! File I/O: opening and releasing files, reading and writing their data,
//! syncing, preallocation, seeking, locks and the filesystem's figures.

use super::*;

/// Files ahead of an opened one, in its directory, whose chunks are loaded
/// ahead (see [`CowFs::prefetch_siblings`]).
const SIBLINGS_AHEAD: usize = 16;
/// Files larger than this are left to their own sequential read-ahead.
const SIBLING_MAX_BYTES: u64 = 256 << 10;
/// Bytes loaded ahead per open at most.
const SIBLINGS_AHEAD_BYTES: u64 = 1 << 20;

impl CowFs {
    /// Opens `ino`; `truncate` empties a file first (O_TRUNC), which drops
    /// its file capabilities as [`CowFs::setattr`] does.
    pub fn open(&self, ino: Ino, truncate: bool) -> FsResult<()> {
        let mut st = self.state.lock();
        let node = st.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.opens += 1;
        if truncate {
            if let NodeKind::File(data) = &node.kind {
                match data.truncate(0) {
                    Ok(Some(shrunk)) => self.sync_before_journal(shrunk),
                    Ok(None) => {}
                    Err(e) => {
                        node.opens -= 1;
                        return Err(e);
                    }
                }
                let t = now();
                node.attrs.mtime = t;
                node.attrs.ctime = t;
                data.set_upper_mtime(t);
                self.mark_changed(&mut st, ino);
                self.drop_capability(&mut st, ino);
                self.log_data(&st, ino);
            }
        }
        self.prefetch_siblings(&st, ino);
        Ok(())
    }

    /// Read-ahead across files: programs that open one file of a
    /// directory usually go on with the next ones in listing order (`tar`,
    /// `cp -r`, an interpreter's imports), and an import stored them side
    /// by side in its packs. So the next [`SIBLINGS_AHEAD`] small files
    /// after `ino` in its directory have their chunks loaded and verified
    /// into the chunk cache on the background pool, each file once.
    fn prefetch_siblings(&self, st: &State, ino: Ino) {
        let Some(node) = st.nodes.get(&ino) else {
            return;
        };
        let (parent, name) = &node.link;
        let Some(Node {
            kind: NodeKind::Dir(dir),
            ..
        }) = st.nodes.get(parent)
        else {
            return;
        };
        let Some(&(_, offset)) = dir.by_name.get(name) else {
            return;
        };
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        for (_, sibling) in dir.by_offset.range(offset + 1..).take(SIBLINGS_AHEAD) {
            let Some(&(child, _)) = dir.by_name.get(sibling) else {
                continue;
            };
            if let Some(Node {
                kind: NodeKind::File(data),
                ..
            }) = st.nodes.get(&child)
            {
                if let Some((base, len)) = data.claim_prefetch(SIBLING_MAX_BYTES) {
                    bytes += len;
                    wanted.push((base, len));
                    if bytes >= SIBLINGS_AHEAD_BYTES {
                        break;
                    }
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        // The store is read on the pool, not under the mount's lock.
        let store = self.store.clone();
        rayon::spawn(move || {
            for (base, len) in wanted {
                if let Err(e) = FileData::prefetch_claimed(&store, &base, len) {
                    tracing::debug!("sibling read-ahead: {e}");
                }
            }
        });
    }

    /// Closes a handle opened by [`CowFs::open`] or [`CowFs::create`].
    pub fn release(&self, ino: Ino) {
        let mut st = self.state.lock();
        if let Some(Node {
            kind: NodeKind::File(data),
            nlink: 1..,
            ..
        }) = st.nodes.get(&ino)
        {
            if data.is_dirty() {
                self.log_data(&st, ino);
            }
        }
        let mut gone = None;
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
            if node.opens == 0 && node.nlink == 0 {
                gone = st.remove_node(ino);
            } else if let (0, NodeKind::File(data)) = (node.opens, &node.kind) {
                // Closed by the sandbox: the mount keeps no descriptor for
                // it (see `datafile`).
                data.close_idle();
            }
        }
        if let Some(node) = gone {
            self.locks.lock().forget(ino);
            if let NodeKind::File(data) = node.kind {
                data.discard();
            }
        }
    }

    /// The lock that would block `probe` on `ino`, if any (`F_GETLK`,
    /// `Tgetlock`).
    pub fn getlk(&self, ino: Ino, probe: &PosixLock) -> FsResult<Option<PosixLock>> {
        self.node(&self.state.lock(), ino)?;
        Ok(self.locks.lock().test(ino, probe))
    }

    /// Sets or releases a POSIX byte-range lock on `ino` without waiting
    /// (`F_SETLK`, `Tlock`); `EAGAIN` when another owner holds a
    /// conflicting one. See [`locks`].
    pub fn setlk(&self, ino: Ino, lock: PosixLock) -> FsResult<()> {
        self.node(&self.state.lock(), ino)?;
        self.locks.lock().set(ino, lock)
    }

    /// Sets, converts or releases a whole-file `flock` lock of `owner`
    /// without waiting.
    pub fn flock(&self, ino: Ino, owner: u64, typ: LockType) -> FsResult<()> {
        self.node(&self.state.lock(), ino)?;
        self.locks.lock().flock(ino, owner, typ)
    }

    /// Drops every lock `owner` holds on `ino` (on close).
    pub fn release_locks(&self, ino: Ino, owner: u64) {
        self.locks.lock().release_owner(ino, owner);
    }

    pub(super) fn file(&self, ino: Ino) -> FsResult<Arc<FileData>> {
        let st = self.state.lock();
        match &self.node(&st, ino)?.kind {
            NodeKind::File(data) => Ok(data.clone()),
            NodeKind::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let data = self.file(ino)?;
        data.read(&self.store, offset, size as usize)
            .map_err(|e| self.eio(e))
    }

    /// Up to `buf.len()` bytes at `offset`, into `buf`; returns how many
    /// (fewer only at the end of the file). `cached_above`: whether the
    /// reader keeps what it reads (see [`CachedAbove`]).
    pub fn read_into(
        &self,
        ino: Ino,
        offset: u64,
        buf: &mut [u8],
        cached_above: CachedAbove,
    ) -> FsResult<usize> {
        let data = self.file(ino)?;
        data.read_into(&self.store, offset, buf, cached_above)
            .map_err(|e| self.eio(e))
    }

    /// Writes `bytes` at `offset`; all or nothing (ENOSPC past the quota).
    /// For a writer without a page cache of its own (see
    /// [`CowFs::write_from`]).
    pub fn write(&self, ino: Ino, offset: u64, bytes: &[u8]) -> FsResult<usize> {
        self.write_from(ino, offset, bytes, CachedAbove::No)
    }

    /// [`CowFs::write`] by a writer that does or does not keep what it
    /// writes in a page cache of its own (see [`CachedAbove`]). With one
    /// (a FUSE mount: the kernel caches the written pages of the mount's
    /// file), a sequential writer's bytes leave the host's page cache of
    /// the upper data file once written back: they would be a second copy,
    /// and a host whose free memory goes back to its hypervisor pays a
    /// fault for every fresh page.
    pub fn write_from(
        &self,
        ino: Ino,
        offset: u64,
        bytes: &[u8],
        cached_above: CachedAbove,
    ) -> FsResult<usize> {
        let data = self.file(ino)?;
        if bytes.is_empty() {
            return Ok(0); // as Linux: no effect, times unchanged
        }
        self.premark(ino);
        data.write(&self.store, offset, bytes, self.quota, cached_above)?;
        let mut st = self.state.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            let t = now();
            node.attrs.mtime = t;
            node.attrs.ctime = t;
        }
        self.mark_changed(&mut st, ino);
        Ok(bytes.len())
    }

    /// Makes `ino`'s data durable in the upper layer.
    /// Its attributes and name, and everything journaled before, are
    /// durable too (as ext4's ordered mode gives).
    pub fn fsync(&self, ino: Ino) -> FsResult<()> {
        self.sync_file(ino, false)
    }

    /// `fdatasync`: `ino`'s bytes and what is needed to read them back
    /// (size, block layout) are durable; a changed mtime alone is not
    /// journaled, so overwriting in place costs one sync of the data.
    pub fn fdatasync(&self, ino: Ino) -> FsResult<()> {
        self.sync_file(ino, true)
    }

    pub(super) fn sync_file(&self, ino: Ino, data_only: bool) -> FsResult<()> {
        if let Ok(data) = self.file(ino) {
            // Size or blocks changed: the journal must say so, once the
            // bytes are durable. An overwrite in place needs no record:
            // its mtime rides as the data file's own, made durable with
            // the bytes by one fsync of the data file.
            let layout_changed = data.layout_dirty();
            let mtime = (!data_only && !layout_changed)
                .then(|| self.node(&self.state.lock(), ino).map(|n| n.attrs.mtime))
                .transpose()?;
            data.sync(data_only, mtime)?;
            if layout_changed {
                let st = self.state.lock();
                self.log_data(&st, ino);
            }
        }
        self.sync_journal()
    }

    /// Makes directory `ino`'s entries durable (and everything journaled
    /// before).
    pub fn fsyncdir(&self, ino: Ino) -> FsResult<()> {
        self.node(&self.state.lock(), ino)?;
        self.sync_journal()
    }

    /// `fallocate`: mode 0 allocates (charging the quota for every block
    /// of the range, all or nothing, and extending the size), so writes
    /// there never lack space; PUNCH_HOLE (with KEEP_SIZE) frees a range,
    /// which then reads as zeros. KEEP_SIZE alone reserves nothing: a
    /// write there is charged when made.
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let data = self.file(ino)?;
        offset.checked_add(len).ok_or(Errno::EFBIG)?;
        self.premark(ino);
        if mode == 0 {
            data.allocate(&self.store, offset, len, self.quota)?;
        } else if mode == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE {
            data.punch(&self.store, offset, len, self.quota)?;
        } else if mode == libc::FALLOC_FL_KEEP_SIZE {
            return Ok(());
        } else {
            return Err(Errno::EOPNOTSUPP);
        }
        // As ext4: a successful allocation or punch changes mtime and ctime.
        let mut st = self.state.lock();
        if let Some(node) = st.nodes.get_mut(&ino) {
            let t = now();
            node.attrs.mtime = t;
            node.attrs.ctime = t;
            data.set_upper_mtime(t);
        }
        self.mark_changed(&mut st, ino);
        self.log_data(&st, ino);
        Ok(())
    }

    /// `lseek` with SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&self, ino: Ino, offset: u64, whence: i32) -> FsResult<u64> {
        let data = self.file(ino)?;
        data.seek_data_hole(&self.store, offset, whence == libc::SEEK_HOLE)
            .map_err(|e| if e == Errno::ENXIO { e } else { self.eio(e.0) })
    }

    /// Filesystem figures; the quota is the size (with a shared space,
    /// what is free is what the mount and the space both have left).
    pub fn statfs(&self) -> StatFs {
        let block = 4096u64;
        let mut used = self.used_bytes().div_ceil(block);
        let blocks = self.quota / block;
        if let Some(shared) = self.files.shared() {
            let free = shared.limit().saturating_sub(shared.used()) / block;
            used = used.max(blocks.saturating_sub(free));
        }
        let st = self.state.lock();
        StatFs {
            block_size: block as u32,
            blocks,
            blocks_free: blocks.saturating_sub(used),
            files: self.inode_quota,
            files_free: self.inode_quota.saturating_sub(st.made.len() as u64),
            name_max: 255,
        }
    }

    /// Marks `ino` changed before its data changes, when incremental
    /// captures are taken (see `CowFs::incremental`).
    fn premark(&self, ino: Ino) {
        if self.incremental.load(std::sync::atomic::Ordering::Relaxed) {
            self.mark_changed(&mut self.state.lock(), ino);
        }
    }
}
