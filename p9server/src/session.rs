//! One client connection's state and what each request does to the
//! filesystem core: fids, their open state, and the mapping of every
//! 9P2000.L request onto [`CowFs`] operations. Nothing here touches the
//! socket; [`crate::server`] reads requests, calls [`Session::handle`]
//! and writes the replies.
//!
//! Permission checks are the client's, as with the FUSE frontend's
//! `default_permissions`: the Linux 9p client checks modes against the
//! attributes served here before it sends a request. Each fid carries the
//! numeric user its attach named (`n_uname`), which owns what it creates.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use layerfs::cowfs::{
    Caller, CowFs, Errno, FileKind, FsResult, Ino, LockType, PosixLock, RenameFlags, SetAttr, Stat,
    TimeSet, XattrMode,
};
use layerfs::tree::{Timestamp, MAX_XATTR_VALUE};
use parking_lot::Mutex;

use crate::proto::{self, getattr, lock, qid_type, setattr, Reply, Request, NOFID, NONUNAME};
use crate::wire::Qid;
use crate::Limits;

/// Finds the mount an attach names by its `aname`.
pub type Resolver = Arc<dyn Fn(&[u8]) -> Option<Arc<CowFs>> + Send + Sync>;

/// Makes the resolver of a new connection, given its session number and
/// its socket (to duplicate, for instance, to learn later whether the
/// peer hung up).
pub type ResolverFactory = Arc<dyn Fn(u64, std::os::fd::BorrowedFd<'_>) -> Resolver + Send + Sync>;

/// What a fid is open for.
#[derive(Debug)]
enum Open {
    /// Walked to, not opened.
    No,
    File {
        write: bool,
    },
    Dir,
    /// The value (or name list) of an extended attribute, read by `Tread`.
    XattrRead(Bytes),
    /// An extended attribute being written by `Twrite`s, set at clunk.
    XattrWrite {
        name: Vec<u8>,
        size: usize,
        value: Vec<u8>,
        mode: XattrMode,
    },
}

/// A fid: a client's handle on one inode of one mount.
struct Fid {
    fs: Arc<CowFs>,
    ino: Ino,
    kind: FileKind,
    /// Owner of what is created through it.
    uid: u32,
    /// Where it was walked to (for `Tremove` and `Trename`); `None` after
    /// a walk through `..` or at the root.
    at: Option<(Ino, Vec<u8>)>,
    open: Open,
}

/// What a request needs of a fid, copied out of the table.
struct FidRef {
    fs: Arc<CowFs>,
    ino: Ino,
    kind: FileKind,
    uid: u32,
    at: Option<(Ino, Vec<u8>)>,
}

/// One client connection.
pub struct Session {
    resolver: Resolver,
    limits: Limits,
    /// The negotiated message size (the server's limit until `Tversion`).
    msize: AtomicU32,
    fids: Mutex<HashMap<u32, Fid>>,
    /// Lock owners that set locks through this session: released when
    /// it ends (a client that goes away drops its locks).
    lockers: Mutex<HashMap<(usize, Ino, u64), Arc<CowFs>>>,
    /// Distinguishes this session's lock owners from other sessions'.
    id: u64,
    /// Bytes of extended-attribute values and name lists held by this
    /// session's fids (bounded by [`Limits::max_xattr_bytes`]).
    xattr_bytes: AtomicUsize,
    /// Fids held by every session of the server (bounded by
    /// [`Limits::max_total_fids`]).
    all_fids: Arc<AtomicUsize>,
}

fn err<T>(e: i32) -> FsResult<T> {
    Err(Errno(e))
}

/// A qid for an inode.
pub fn qid_of(ino: Ino, kind: FileKind) -> Qid {
    Qid {
        typ: match kind {
            FileKind::Dir => qid_type::DIR,
            FileKind::Symlink => qid_type::SYMLINK,
            _ => qid_type::FILE,
        },
        version: 0,
        path: ino,
    }
}

fn dirent_type(kind: FileKind) -> u8 {
    match kind {
        FileKind::File => libc::DT_REG,
        FileKind::Dir => libc::DT_DIR,
        FileKind::Symlink => libc::DT_LNK,
        FileKind::CharDevice => libc::DT_CHR,
        FileKind::BlockDevice => libc::DT_BLK,
        FileKind::Fifo => libc::DT_FIFO,
        FileKind::Socket => libc::DT_SOCK,
    }
}

fn getattr_reply(st: &Stat) -> Reply {
    let t = |t: Timestamp| (t.secs as u64, u64::from(t.nanos));
    let (atime_sec, atime_nsec) = t(st.atime);
    let (mtime_sec, mtime_nsec) = t(st.mtime);
    let (ctime_sec, ctime_nsec) = t(st.ctime);
    Reply::Getattr {
        valid: getattr::BASIC,
        qid: qid_of(st.ino, st.kind),
        mode: st.kind.mode_bits() | st.perm,
        uid: st.uid,
        gid: st.gid,
        nlink: u64::from(st.nlink),
        rdev: st.rdev,
        size: st.size,
        blksize: 4096,
        blocks: st.blocks,
        atime_sec,
        atime_nsec,
        mtime_sec,
        mtime_nsec,
        ctime_sec,
        ctime_nsec,
        btime_sec: 0,
        btime_nsec: 0,
        gen: 0,
        data_version: 0,
    }
}

fn time_set(valid: u32, bit: u32, set_bit: u32, sec: u64, nsec: u64) -> Option<TimeSet> {
    if valid & bit == 0 {
        return None;
    }
    if valid & set_bit == 0 {
        return Some(TimeSet::Now);
    }
    Some(TimeSet::At(Timestamp {
        secs: sec as i64,
        nanos: (nsec as u32).min(999_999_999),
    }))
}

/// A lock request's byte range as `start..=end`.
fn lock_range(start: u64, length: u64) -> (u64, u64) {
    if length == 0 {
        (start, u64::MAX)
    } else {
        (start, start.saturating_add(length - 1))
    }
}

impl Session {
    /// A new session with the server's limits; `id` tells sessions apart.
    pub fn new(resolver: Resolver, limits: Limits, id: u64) -> Session {
        Session::sharing_fids(resolver, limits, id, Arc::default())
    }

    /// A session whose fids count against `all_fids`, the server's total.
    pub fn sharing_fids(
        resolver: Resolver,
        limits: Limits,
        id: u64,
        all_fids: Arc<AtomicUsize>,
    ) -> Session {
        Session {
            msize: AtomicU32::new(limits.max_msize),
            resolver,
            limits,
            fids: Mutex::new(HashMap::new()),
            lockers: Mutex::new(HashMap::new()),
            id,
            xattr_bytes: AtomicUsize::new(0),
            all_fids,
        }
    }

    /// Reserves `n` bytes of extended-attribute buffers: ENOMEM past the
    /// session's bound.
    fn reserve_xattr(&self, n: usize) -> FsResult<()> {
        let before = self.xattr_bytes.fetch_add(n, Ordering::SeqCst);
        if before + n > self.limits.max_xattr_bytes {
            self.xattr_bytes.fetch_sub(n, Ordering::SeqCst);
            return err(libc::ENOMEM);
        }
        Ok(())
    }

    /// The negotiated message size.
    pub fn msize(&self) -> u32 {
        self.msize.load(Ordering::Relaxed)
    }

    /// Number of fids in use.
    pub fn fid_count(&self) -> usize {
        self.fids.lock().len()
    }

    /// Whether a request may take long (data I/O, syncs, directory
    /// loads): such requests run on the blocking pool, the rest inline.
    pub fn is_slow(req: &Request) -> bool {
        matches!(
            req,
            // An attach may start a session (a volume's: refs and a
            // journal written) or wait for one to end.
            Request::Attach { .. }
                | Request::Read { .. }
                | Request::Write { .. }
                | Request::Fsync { .. }
                | Request::Lopen { .. }
                | Request::Setattr { .. }
                | Request::Readdir { .. }
                | Request::Remove { .. }
                | Request::Unlinkat { .. }
        )
    }

    /// Whether a slow-listed request is usually memory work all the same:
    /// reading or writing file data (the page cache), listing a directory,
    /// opening without truncating (what they need is loaded already or in
    /// the chunk cache), removing a name (a journal record; only a large
    /// file's data takes the disk long to free). The server answers these
    /// inline while the session has nothing else in flight (see `server`).
    pub fn is_usually_quick(req: &Request) -> bool {
        match req {
            Request::Read { .. }
            | Request::Write { .. }
            | Request::Readdir { .. }
            | Request::Unlinkat { .. }
            | Request::Remove { .. } => true,
            Request::Lopen { flags, .. } => flags & libc::O_TRUNC as u32 == 0,
            _ => false,
        }
    }

    /// Answers one request (not `Tversion` or `Tflush`, which the server
    /// handles because they concern the connection).
    pub fn handle(&self, req: Request) -> Reply {
        match self.dispatch(req) {
            Ok(reply) => reply,
            Err(Errno(e)) => Reply::Lerror { ecode: e as u32 },
        }
    }

    /// `Tversion`: negotiates the message size and starts over (every fid
    /// is clunked). `None` when the client's version or size is refused.
    pub fn version(&self, msize: u32, version: &[u8]) -> Reply {
        self.end();
        if !version.starts_with(proto::VERSION_9P2000_L) || msize < 4096 {
            return Reply::Version {
                msize: self.limits.max_msize,
                version: b"unknown".to_vec(),
            };
        }
        let msize = msize.min(self.limits.max_msize);
        self.msize.store(msize, Ordering::Relaxed);
        Reply::Version {
            msize,
            version: proto::VERSION_9P2000_L.to_vec(),
        }
    }

    /// Ends the session: clunks every fid and drops its locks.
    pub fn end(&self) {
        let fids: Vec<Fid> = self.fids.lock().drain().map(|(_, f)| f).collect();
        for fid in fids {
            let _ = self.close(fid);
        }
        let lockers: Vec<_> = self.lockers.lock().drain().collect();
        for ((_, ino, owner), fs) in lockers {
            fs.release_locks(ino, owner);
        }
    }

    fn get(&self, fid: u32) -> FsResult<FidRef> {
        let fids = self.fids.lock();
        let f = fids.get(&fid).ok_or(Errno(libc::EBADF))?;
        Ok(FidRef {
            fs: f.fs.clone(),
            ino: f.ino,
            kind: f.kind,
            uid: f.uid,
            at: f.at.clone(),
        })
    }

    fn insert(&self, fid: u32, new: Fid, replacing: bool) -> FsResult<()> {
        let mut fids = self.fids.lock();
        if !replacing {
            if fids.contains_key(&fid) {
                return err(libc::EBADF);
            }
            if fids.len() >= self.limits.max_fids {
                return err(libc::EMFILE);
            }
        }
        if !fids.contains_key(&fid) {
            // A new fid: counted against the server's total.
            if self.all_fids.fetch_add(1, Ordering::SeqCst) >= self.limits.max_total_fids {
                self.all_fids.fetch_sub(1, Ordering::SeqCst);
                return err(libc::ENFILE);
            }
        }
        if let Some(old) = fids.insert(fid, new) {
            drop(fids);
            self.all_fids.fetch_add(1, Ordering::SeqCst); // `close` counts it out
            let _ = self.close(old);
        }
        Ok(())
    }

    /// Takes fid `fid` out of the table (to close it).
    fn take(&self, fid: u32) -> FsResult<Fid> {
        self.fids.lock().remove(&fid).ok_or(Errno(libc::EBADF))
    }

    /// Lets go of a fid: closes what it had open, applies a pending
    /// extended attribute and gives back what it held of the bounds.
    fn close(&self, fid: Fid) -> FsResult<()> {
        self.all_fids.fetch_sub(1, Ordering::SeqCst);
        let xattr_held = match &fid.open {
            Open::XattrRead(value) => value.len(),
            Open::XattrWrite { size, .. } => *size,
            _ => 0,
        };
        self.xattr_bytes.fetch_sub(xattr_held, Ordering::SeqCst);
        match fid.open {
            Open::File { .. } | Open::Dir => {
                fid.fs.release(fid.ino);
                Ok(())
            }
            Open::XattrWrite {
                name,
                size,
                value,
                mode,
            } => {
                if size == 0 && value.is_empty() {
                    return fid.fs.removexattr(fid.ino, &name);
                }
                if value.len() != size {
                    return err(libc::EINVAL);
                }
                fid.fs.setxattr(fid.ino, &name, &value, mode)
            }
            Open::No | Open::XattrRead(_) => Ok(()),
        }
    }

    fn same_fs(a: &FidRef, b: &FidRef) -> FsResult<()> {
        if Arc::ptr_eq(&a.fs, &b.fs) {
            Ok(())
        } else {
            err(libc::EXDEV)
        }
    }

    fn lock_owner(&self, proc_id: u32, client_id: &[u8]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.id, proc_id, client_id).hash(&mut h);
        h.finish()
    }

    fn dispatch(&self, req: Request) -> FsResult<Reply> {
        match req {
            Request::Version { .. } | Request::Flush { .. } => err(libc::EINVAL),
            Request::Auth { .. } => {
                // No authentication is needed: attach without an afid. ENOENT
                // is what diod answers here, and the one answer diod's
                // client library (diodls, diodcat, mount.diod) takes as
                // "attach without authentication".
                err(libc::ENOENT)
            }
            Request::Attach {
                fid,
                afid,
                aname,
                n_uname,
                ..
            } => {
                if afid != NOFID {
                    return err(libc::EINVAL);
                }
                let fs = (self.resolver)(&aname).ok_or(Errno::ENOENT)?;
                let st = fs.getattr(layerfs::cowfs::ROOT_INO)?;
                let uid = if n_uname == NONUNAME { 0 } else { n_uname };
                self.insert(
                    fid,
                    Fid {
                        fs,
                        ino: st.ino,
                        kind: st.kind,
                        uid,
                        at: None,
                        open: Open::No,
                    },
                    false,
                )?;
                Ok(Reply::Attach {
                    qid: qid_of(st.ino, st.kind),
                })
            }
            Request::Walk { fid, newfid, names } => self.walk(fid, newfid, &names),
            Request::Lopen { fid, flags } => self.lopen(fid, flags),
            Request::Lcreate {
                fid,
                name,
                flags: _,
                mode,
                gid,
            } => {
                let dir = self.get(fid)?;
                let st =
                    dir.fs
                        .create(dir.ino, &name, mode & 0o7777, Caller { uid: dir.uid, gid })?;
                self.mark_open(fid, &dir.fs, st.ino, None, |f| {
                    f.ino = st.ino;
                    f.kind = st.kind;
                    f.at = Some((dir.ino, name));
                    f.open = Open::File { write: true };
                })?;
                Ok(Reply::Lcreate {
                    qid: qid_of(st.ino, st.kind),
                    iounit: 0,
                })
            }
            Request::Read { fid, offset, count } => self.read(fid, offset, count),
            Request::Write { fid, offset, data } => self.write(fid, offset, data),
            Request::Clunk { fid } => {
                let f = self.take(fid)?;
                self.close(f)?;
                Ok(Reply::Clunk {})
            }
            Request::Remove { fid } => {
                let f = self.take(fid)?;
                let (fs, ino, kind, at) = (f.fs.clone(), f.ino, f.kind, f.at.clone());
                self.close(f)?;
                let (parent, name) = at.ok_or(Errno::EINVAL)?;
                if fs.lookup(parent, &name)?.ino != ino {
                    return err(libc::ENOENT);
                }
                if kind == FileKind::Dir {
                    fs.rmdir(parent, &name)?;
                } else {
                    fs.unlink(parent, &name)?;
                }
                Ok(Reply::Remove {})
            }
            Request::Statfs { fid } => {
                let f = self.get(fid)?;
                let s = f.fs.statfs();
                Ok(Reply::Statfs {
                    typ: 0x0102_1997, // V9FS_MAGIC
                    bsize: s.block_size,
                    blocks: s.blocks,
                    bfree: s.blocks_free,
                    bavail: s.blocks_free,
                    files: s.files,
                    ffree: s.files_free,
                    fsid: 0,
                    namelen: s.name_max,
                })
            }
            Request::Getattr { fid, mask: _ } => {
                let f = self.get(fid)?;
                Ok(getattr_reply(&f.fs.getattr(f.ino)?))
            }
            Request::Setattr {
                fid,
                valid,
                mode,
                uid,
                gid,
                size,
                atime_sec,
                atime_nsec,
                mtime_sec,
                mtime_nsec,
            } => {
                let f = self.get(fid)?;
                let set = SetAttr {
                    mode: (valid & setattr::MODE != 0).then_some(mode & 0o7777),
                    uid: (valid & setattr::UID != 0).then_some(uid),
                    gid: (valid & setattr::GID != 0).then_some(gid),
                    size: (valid & setattr::SIZE != 0).then_some(size),
                    atime: time_set(
                        valid,
                        setattr::ATIME,
                        setattr::ATIME_SET,
                        atime_sec,
                        atime_nsec,
                    ),
                    mtime: time_set(
                        valid,
                        setattr::MTIME,
                        setattr::MTIME_SET,
                        mtime_sec,
                        mtime_nsec,
                    ),
                };
                if set == SetAttr::default() && valid & setattr::CTIME == 0 {
                    return Ok(Reply::Setattr {});
                }
                f.fs.setattr(f.ino, set)?;
                Ok(Reply::Setattr {})
            }
            Request::Readlink { fid } => {
                let f = self.get(fid)?;
                Ok(Reply::Readlink {
                    target: f.fs.readlink(f.ino)?,
                })
            }
            Request::Readdir { fid, offset, count } => self.readdir(fid, offset, count),
            Request::Fsync { fid, datasync } => {
                let f = self.get(fid)?;
                match (f.kind, datasync != 0) {
                    (FileKind::Dir, _) => f.fs.fsyncdir(f.ino)?,
                    (_, true) => f.fs.fdatasync(f.ino)?,
                    (_, false) => f.fs.fsync(f.ino)?,
                }
                Ok(Reply::Fsync {})
            }
            Request::Mkdir {
                dfid,
                name,
                mode,
                gid,
            } => {
                let d = self.get(dfid)?;
                let st =
                    d.fs.mkdir(d.ino, &name, mode & 0o7777, Caller { uid: d.uid, gid })?;
                Ok(Reply::Mkdir {
                    qid: qid_of(st.ino, st.kind),
                })
            }
            Request::Symlink {
                fid,
                name,
                target,
                gid,
            } => {
                let d = self.get(fid)?;
                let st =
                    d.fs.symlink(d.ino, &name, &target, Caller { uid: d.uid, gid })?;
                Ok(Reply::Symlink {
                    qid: qid_of(st.ino, st.kind),
                })
            }
            Request::Mknod {
                dfid,
                name,
                mode,
                major,
                minor,
                gid,
            } => {
                let d = self.get(dfid)?;
                let kind = match mode & libc::S_IFMT {
                    libc::S_IFREG | 0 => FileKind::File,
                    libc::S_IFCHR => FileKind::CharDevice,
                    libc::S_IFBLK => FileKind::BlockDevice,
                    libc::S_IFIFO => FileKind::Fifo,
                    libc::S_IFSOCK => FileKind::Socket,
                    _ => return err(libc::EINVAL),
                };
                let st = d.fs.mknod(
                    d.ino,
                    &name,
                    kind,
                    mode & 0o7777,
                    libc::makedev(major, minor),
                    Caller { uid: d.uid, gid },
                )?;
                Ok(Reply::Mknod {
                    qid: qid_of(st.ino, st.kind),
                })
            }
            Request::Link { dfid, fid, name } => {
                let d = self.get(dfid)?;
                let f = self.get(fid)?;
                Self::same_fs(&d, &f)?;
                d.fs.link(f.ino, d.ino, &name)?;
                Ok(Reply::Link {})
            }
            Request::Rename { fid, dfid, name } => {
                let f = self.get(fid)?;
                let d = self.get(dfid)?;
                Self::same_fs(&f, &d)?;
                let (parent, old) = f.at.clone().ok_or(Errno::EINVAL)?;
                f.fs.rename(parent, &old, d.ino, &name, RenameFlags::default())?;
                if let Some(x) = self.fids.lock().get_mut(&fid) {
                    x.at = Some((d.ino, name));
                }
                Ok(Reply::Rename {})
            }
            Request::Renameat {
                olddirfid,
                oldname,
                newdirfid,
                newname,
            } => {
                let a = self.get(olddirfid)?;
                let b = self.get(newdirfid)?;
                Self::same_fs(&a, &b)?;
                a.fs.rename(a.ino, &oldname, b.ino, &newname, RenameFlags::default())?;
                Ok(Reply::Renameat {})
            }
            Request::Unlinkat {
                dirfid,
                name,
                flags,
            } => {
                let d = self.get(dirfid)?;
                if flags & libc::AT_REMOVEDIR as u32 != 0 {
                    d.fs.rmdir(d.ino, &name)?;
                } else {
                    d.fs.unlink(d.ino, &name)?;
                }
                Ok(Reply::Unlinkat {})
            }
            Request::Xattrwalk { fid, newfid, name } => {
                let f = self.get(fid)?;
                let value = if name.is_empty() {
                    let mut list = Vec::new();
                    for n in f.fs.listxattr(f.ino)? {
                        list.extend_from_slice(&n);
                        list.push(0);
                    }
                    list
                } else {
                    f.fs.getxattr(f.ino, &name)?
                };
                let size = value.len() as u64;
                self.reserve_xattr(value.len())?;
                let inserted = self.insert(
                    newfid,
                    Fid {
                        fs: f.fs,
                        ino: f.ino,
                        kind: f.kind,
                        uid: f.uid,
                        at: None,
                        open: Open::XattrRead(Bytes::from(value)),
                    },
                    newfid == fid,
                );
                if inserted.is_err() {
                    self.xattr_bytes.fetch_sub(size as usize, Ordering::SeqCst);
                }
                inserted?;
                Ok(Reply::Xattrwalk { size })
            }
            Request::Xattrcreate {
                fid,
                name,
                size,
                flags,
            } => {
                if size > MAX_XATTR_VALUE as u64 {
                    return err(libc::E2BIG);
                }
                if name.is_empty() || name.len() > 255 || name.contains(&0) {
                    return err(libc::EINVAL);
                }
                let mode = match flags {
                    0 => XattrMode::Set,
                    1 => XattrMode::Create,
                    2 => XattrMode::Replace,
                    _ => return err(libc::EINVAL),
                };
                let mut fids = self.fids.lock();
                let f = fids.get_mut(&fid).ok_or(Errno(libc::EBADF))?;
                if !matches!(f.open, Open::No) {
                    return err(libc::EBADF);
                }
                self.reserve_xattr(size as usize)?;
                f.open = Open::XattrWrite {
                    name,
                    size: size as usize,
                    value: Vec::new(),
                    mode,
                };
                Ok(Reply::Xattrcreate {})
            }
            Request::Lock {
                fid,
                typ,
                flags: _,
                start,
                length,
                proc_id,
                client_id,
            } => {
                let f = self.get(fid)?;
                let typ = match typ {
                    lock::RDLCK => LockType::Read,
                    lock::WRLCK => LockType::Write,
                    lock::UNLCK => LockType::Unlock,
                    _ => return err(libc::EINVAL),
                };
                let (start, end) = lock_range(start, length);
                let owner = self.lock_owner(proc_id, &client_id);
                let status = match f.fs.setlk(
                    f.ino,
                    PosixLock {
                        typ,
                        start,
                        end,
                        owner,
                        pid: proc_id,
                    },
                ) {
                    Ok(()) => {
                        if typ != LockType::Unlock {
                            let key = (Arc::as_ptr(&f.fs) as usize, f.ino, owner);
                            self.lockers.lock().insert(key, f.fs.clone());
                        }
                        lock::SUCCESS
                    }
                    // The client waits and asks again (F_SETLKW).
                    Err(Errno::EAGAIN) => lock::BLOCKED,
                    Err(_) => lock::ERROR,
                };
                Ok(Reply::Lock { status })
            }
            Request::Getlock {
                fid,
                typ,
                start,
                length,
                proc_id,
                client_id,
            } => {
                let f = self.get(fid)?;
                let probe_typ = match typ {
                    lock::RDLCK => LockType::Read,
                    lock::WRLCK => LockType::Write,
                    _ => return err(libc::EINVAL),
                };
                let (s, e) = lock_range(start, length);
                let owner = self.lock_owner(proc_id, &client_id);
                let held = f.fs.getlk(
                    f.ino,
                    &PosixLock {
                        typ: probe_typ,
                        start: s,
                        end: e,
                        owner,
                        pid: proc_id,
                    },
                )?;
                Ok(match held {
                    None => Reply::Getlock {
                        typ: lock::UNLCK,
                        start,
                        length,
                        proc_id,
                        client_id,
                    },
                    Some(l) => Reply::Getlock {
                        typ: if l.typ == LockType::Write {
                            lock::WRLCK
                        } else {
                            lock::RDLCK
                        },
                        start: l.start,
                        length: if l.end == u64::MAX {
                            0
                        } else {
                            l.end - l.start + 1
                        },
                        proc_id: l.pid,
                        client_id: Vec::new(),
                    },
                })
            }
        }
    }

    fn walk(&self, fid: u32, newfid: u32, names: &[Vec<u8>]) -> FsResult<Reply> {
        let base = self.get(fid)?;
        if newfid != fid && self.fids.lock().contains_key(&newfid) {
            return err(libc::EBADF);
        }
        let (mut ino, mut kind, mut at) = (base.ino, base.kind, base.at.clone());
        let mut qids = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if kind != FileKind::Dir {
                if i == 0 {
                    return err(libc::ENOTDIR);
                }
                break;
            }
            match base.fs.lookup(ino, name) {
                Ok(st) => {
                    at = match name.as_slice() {
                        b"." => at,
                        b".." => None,
                        _ => Some((ino, name.clone())),
                    };
                    ino = st.ino;
                    kind = st.kind;
                    qids.push(qid_of(st.ino, st.kind));
                }
                Err(e) if i == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if qids.len() == names.len() {
            self.insert(
                newfid,
                Fid {
                    fs: base.fs,
                    ino,
                    kind,
                    uid: base.uid,
                    at,
                    open: Open::No,
                },
                newfid == fid,
            )?;
        }
        Ok(Reply::Walk { qids })
    }

    /// Records what was opened (`opened`, in `fs`) on `fid` with `update`,
    /// if the fid is still unopened and, with `expect`, still names that
    /// inode (another request may have clunked or reused it meanwhile);
    /// otherwise gives the opened inode back and answers EBADF.
    fn mark_open(
        &self,
        fid: u32,
        fs: &Arc<CowFs>,
        opened: Ino,
        expect: Option<Ino>,
        update: impl FnOnce(&mut Fid),
    ) -> FsResult<()> {
        let mut fids = self.fids.lock();
        match fids.get_mut(&fid) {
            Some(f) if matches!(f.open, Open::No) && expect.is_none_or(|ino| f.ino == ino) => {
                update(f);
                Ok(())
            }
            _ => {
                drop(fids);
                fs.release(opened);
                err(libc::EBADF)
            }
        }
    }

    fn lopen(&self, fid: u32, flags: u32) -> FsResult<Reply> {
        let f = self.get(fid)?;
        let access = flags & libc::O_ACCMODE as u32;
        let write = access != libc::O_RDONLY as u32;
        let open = match f.kind {
            FileKind::Dir if write => return err(libc::EISDIR),
            FileKind::Dir => {
                f.fs.open(f.ino, false)?;
                Open::Dir
            }
            FileKind::File => {
                f.fs.open(f.ino, write && flags & libc::O_TRUNC as u32 != 0)?;
                Open::File { write }
            }
            _ => return err(libc::EINVAL),
        };
        self.mark_open(fid, &f.fs, f.ino, Some(f.ino), |x| x.open = open)?;
        Ok(Reply::Lopen {
            qid: qid_of(f.ino, f.kind),
            iounit: 0,
        })
    }

    fn read(&self, fid: u32, offset: u64, count: u32) -> FsResult<Reply> {
        let count = count.min(self.msize() - proto::READ_OVERHEAD);
        let (fs, ino) = {
            let fids = self.fids.lock();
            let f = fids.get(&fid).ok_or(Errno(libc::EBADF))?;
            match &f.open {
                Open::File { .. } => (f.fs.clone(), f.ino),
                Open::XattrRead(value) => {
                    let start = (offset.min(value.len() as u64)) as usize;
                    let end = (start + count as usize).min(value.len());
                    return Ok(Reply::Read {
                        data: value.slice(start..end),
                    });
                }
                Open::Dir => return err(libc::EISDIR),
                _ => return err(libc::EBADF),
            }
        };
        Ok(Reply::Read {
            data: Bytes::from(fs.read(ino, offset, count)?),
        })
    }

    fn write(&self, fid: u32, offset: u64, data: Bytes) -> FsResult<Reply> {
        let (fs, ino) = {
            let mut fids = self.fids.lock();
            let f = fids.get_mut(&fid).ok_or(Errno(libc::EBADF))?;
            match &mut f.open {
                Open::File { write: true } => (f.fs.clone(), f.ino),
                Open::XattrWrite { size, value, .. } => {
                    if offset != value.len() as u64 || value.len() + data.len() > *size {
                        return err(libc::EINVAL);
                    }
                    value.extend_from_slice(&data);
                    return Ok(Reply::Write {
                        count: data.len() as u32,
                    });
                }
                _ => return err(libc::EBADF),
            }
        };
        let n = fs.write(ino, offset, &data)?;
        Ok(Reply::Write { count: n as u32 })
    }

    fn readdir(&self, fid: u32, offset: u64, count: u32) -> FsResult<Reply> {
        let (fs, ino) = {
            let fids = self.fids.lock();
            let f = fids.get(&fid).ok_or(Errno(libc::EBADF))?;
            match f.open {
                Open::Dir => (f.fs.clone(), f.ino),
                _ => return err(libc::EBADF),
            }
        };
        let limit = count.min(self.msize() - proto::READ_OVERHEAD) as usize;
        let mut out = Vec::with_capacity(limit.min(64 * 1024));
        fs.readdir_each(ino, offset, |e| {
            if out.len() + proto::dir_entry_len(e.name) > limit {
                return true;
            }
            proto::encode_dir_entry(
                &mut out,
                &qid_of(e.ino, e.kind),
                e.offset,
                dirent_type(e.kind),
                e.name,
            );
            false
        })?;
        Ok(Reply::Readdir {
            data: Bytes::from(out),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end();
    }
}
