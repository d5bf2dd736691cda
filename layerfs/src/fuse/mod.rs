//! The FUSE frontend: serves a [`CowFs`] through the kernel's FUSE driver.
//!
//! Transport: requests come over io_uring when the kernel offers it
//! ([`ring`]: one pinned thread per CPU answers the requests sent from
//! that CPU; the bytes of each operation are laid out in [`wire`]), and
//! otherwise through `/dev/fuse` (fuser, several request threads). Both
//! answer through the same methods of `FuseFs`, so the two behave alike
//! (`tests/fuse_io_uring.rs` and pjdfstest hold them to it). fuser
//! answers INIT and what never travels over the ring (FORGET, INTERRUPT,
//! notifications) in either case.
//!
//! Caching: attributes and entries are cached by the kernel for a while
//! ([`ATTR_TTL`]); every change goes through this process, so the kernel's
//! view stays right. Page-cache contents are kept across opens
//! (`FOPEN_KEEP_CACHE`) for the same reason. The writeback cache is off: a
//! write past the quota must fail at `write()` with ENOSPC, not later.
//! Permission checks are the kernel's (`default_permissions`), against the
//! attributes served here.
//!
//! Round trips: listings carry attributes (READDIRPLUS), so a first
//! `ls -l` of a directory needs no LOOKUP per entry; dropping setuid,
//! setgid and file capabilities on write, truncate and chown is done here
//! (`FUSE_HANDLE_KILLPRIV_V2`), so the kernel no longer asks for
//! `security.capability` before every WRITE; OPENDIR and FLUSH are
//! answered ENOSYS once, and the kernel stops sending them.
//!
//! Locks: `flock` and `fcntl` locks are left to the kernel (neither
//! `FUSE_POSIX_LOCKS` nor `FUSE_FLOCK_LOCKS` is asked for). Every process
//! using a mount goes through this one kernel, so its local lock table is
//! exact, and it handles what a FUSE server cannot do well: blocking waits
//! that a signal interrupts, and deadlock detection. The core's own lock
//! table ([`crate::cowfs::locks`]) serves protocols whose clients are on
//! other kernels (9P).

mod ring;
mod wire;

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    IoctlFlags, LockOwner, MountOption, OpenFlags, RenameFlags as FuseRenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::cowfs::acl::{self, Inherited};
use crate::cowfs::{
    CachedAbove, Caller, CowFs, Errno, FileKind, RenameFlags, SetAttr, Stat, TimeSet, XattrMode,
};
use crate::tree::Timestamp;

/// Whether `e`, from a call on a FUSE mount, says its server is gone: the
/// kernel answers ENOTCONN once the server's `/dev/fuse` is closed, and
/// ECONNABORTED when the connection was aborted (as it is when a server
/// that took requests over io_uring dies). In the moment after such a
/// server dies, a request the kernel had already handed to one of its
/// ring entries ends with ECANCELED instead (the entry's command is
/// cancelled with its dead task); this server never answers ECANCELED
/// itself, so that means gone too.
pub fn server_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED)
    )
}

/// Tells the kernel that directory `parent` gained or lost entry `name`
/// behind its back (a graft): its cached entry and listing are dropped.
pub fn invalidate_entry(session: &FuseSession, parent: u64, name: &[u8]) {
    let notifier = session.notifier();
    let _ = notifier.inval_entry(INodeNo(parent), std::ffi::OsStr::from_bytes(name));
    let _ = notifier.inval_inode(INodeNo(parent), 0, 0);
}

/// Tells the kernel that inode `ino`'s attributes (and, for a file, its
/// cached data) changed behind its back (a rebase).
pub fn invalidate_inode(session: &FuseSession, ino: u64) {
    let _ = session.notifier().inval_inode(INodeNo(ino), 0, 0);
}

/// How long the kernel may cache attributes and entries.
pub const ATTR_TTL: Duration = Duration::from_secs(60);

/// Options of one FUSE mount.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// Request threads.
    pub threads: usize,
    /// Let users other than the mounting one in (needed as a container root).
    pub allow_other: bool,
    /// Name shown in /proc/mounts.
    pub fs_name: String,
    /// Mount read-only (the kernel refuses every change with EROFS).
    pub read_only: bool,
    /// Take requests over io_uring when the kernel offers it (the fuse
    /// module's `enable_uring`; see [`ring`]) and this process may mount
    /// (root); otherwise, and if setting it up fails, through `/dev/fuse`.
    pub io_uring: bool,
}

impl Default for FuseOptions {
    fn default() -> FuseOptions {
        FuseOptions {
            threads: 4,
            allow_other: true,
            fs_name: "strata".into(),
            read_only: false,
            io_uring: true,
        }
    }
}

/// A mounted [`CowFs`]: unmounted when dropped (or by
/// [`FuseSession::umount_and_join`]).
pub struct FuseSession {
    session: Option<fuser::BackgroundSession>,
    /// Where this process mounted it itself (the io_uring path; fuser
    /// unmounts its own mounts).
    mounted_at: Option<PathBuf>,
    /// The io_uring threads; empty when requests go through `/dev/fuse`.
    ring: Vec<JoinHandle<()>>,
    /// Requests answered over io_uring.
    ring_requests: Arc<AtomicU64>,
}

impl FuseSession {
    /// Tells the kernel of changes it did not make (see
    /// [`invalidate_entry`], [`invalidate_inode`]).
    pub fn notifier(&self) -> fuser::Notifier {
        self.session
            .as_ref()
            .expect("a session until it is unmounted")
            .notifier()
    }

    /// Whether requests come over io_uring.
    pub fn uses_io_uring(&self) -> bool {
        !self.ring.is_empty()
    }

    /// Requests answered over io_uring so far.
    pub fn io_uring_requests(&self) -> u64 {
        self.ring_requests.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended (unmounted, perhaps from outside)
    /// and every request thread with it: no request is being answered.
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
            && self.ring.iter().all(|t| t.is_finished())
    }

    /// Unmounts (lazily: files still open keep it alive) and waits for the
    /// request threads to end.
    pub fn umount_and_join(mut self) -> std::io::Result<()> {
        self.unmount();
        self.join_threads(true)
    }

    /// Waits for the request threads once the mount was ended elsewhere;
    /// unmounts nothing.
    pub fn join(mut self) -> std::io::Result<()> {
        self.mounted_at = None;
        self.join_threads(false)
    }

    fn join_threads(&mut self, unmount: bool) -> std::io::Result<()> {
        let joined = match self.session.take() {
            Some(session) if unmount => session.umount_and_join(),
            Some(session) => session.join(),
            None => Ok(()),
        };
        for thread in std::mem::take(&mut self.ring) {
            let _ = thread.join();
        }
        joined
    }

    fn unmount(&mut self) {
        if let Some(at) = self.mounted_at.take() {
            if let Ok(path) = CString::new(at.as_os_str().as_bytes()) {
                // SAFETY: `path` is a NUL-ended string that outlives the call.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    let e = std::io::Error::last_os_error();
                    // EINVAL: no longer mounted there (unmounted from outside).
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        tracing::warn!("unmounting {}: {e}", at.display());
                    }
                }
            }
        }
    }
}

impl Drop for FuseSession {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Mounts `fs` at `mountpoint`; unmounts when the returned session drops
/// (or on [`FuseSession::umount_and_join`]).
pub fn mount(
    fs: Arc<CowFs>,
    mountpoint: &Path,
    options: &FuseOptions,
) -> std::io::Result<FuseSession> {
    let notifier = Arc::new(OnceLock::new());
    let reserved = if options.io_uring && ring::enabled() {
        ring::reserve()
    } else {
        None
    };
    let fuse_fs = FuseFs {
        fs,
        notifier: notifier.clone(),
        io_uring: reserved.is_some(),
        ring_negotiated: Arc::new(AtomicBool::new(false)),
    };
    if let Some(reserved) = reserved {
        match mount_for_ring(fuse_fs.clone(), mountpoint, options, reserved) {
            Ok(session) => {
                let _ = notifier.set(session.notifier());
                return Ok(session);
            }
            // Not allowed to mount directly (not root): fuser's way.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    let session = fuser::spawn_mount2(
        FuseFs {
            io_uring: false,
            ..fuse_fs
        },
        mountpoint,
        &fuser_config(options),
    )?;
    let _ = notifier.set(session.notifier());
    Ok(FuseSession {
        session: Some(session),
        mounted_at: None,
        ring: Vec::new(),
        ring_requests: Arc::default(),
    })
}

fn fuser_config(options: &FuseOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(options.fs_name.clone()),
        MountOption::Subtype("strata".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::Exec,
        if options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config
}

/// Mounts with `mount(2)` on a `/dev/fuse` of our own, so that the same
/// connection can be served over io_uring: fuser answers INIT (asking for
/// `FUSE_OVER_IO_URING`) and then serves what comes through `/dev/fuse`,
/// the ring threads the rest.
fn mount_for_ring(
    fs: FuseFs,
    mountpoint: &Path,
    options: &FuseOptions,
    reserved: ring::Reservation,
) -> std::io::Result<FuseSession> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions{}",
        dev.as_raw_fd(),
        if options.allow_other {
            ",allow_other"
        } else {
            ""
        }
    );
    let c = |s: &[u8]| CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let (source, target, fstype, data) = (
        c(options.fs_name.as_bytes())?,
        c(mountpoint.as_os_str().as_bytes())?,
        c(b"fuse.strata")?,
        c(data.as_bytes())?,
    );
    let flags = if options.read_only {
        libc::MS_RDONLY
    } else {
        0
    };
    // SAFETY: every pointer is a NUL-ended string that outlives the call.
    let mounted = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if mounted != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut session = FuseSession {
        session: None,
        mounted_at: Some(mountpoint.to_path_buf()),
        ring: Vec::new(),
        ring_requests: Arc::default(),
    };
    let dev = Arc::new(dev);
    let fuser_fd: OwnedFd = dev.try_clone()?.into();
    let negotiated = fs.ring_negotiated.clone();
    let mut config = fuser_config(options);
    config.mount_options.clear();
    // fuser answers INIT here, before this returns.
    let fuser_session = fuser::Session::from_fd(fs.clone(), fuser_fd, config.acl, config)?;
    session.session = Some(fuser_session.spawn()?);
    if negotiated.load(Ordering::SeqCst) {
        match ring::start(&fs, &dev, &session.ring_requests, reserved) {
            Ok(threads) => session.ring = threads,
            Err(e) => tracing::warn!(
                "FUSE over io_uring could not be set up ({e}); requests go through /dev/fuse"
            ),
        }
    }
    Ok(session)
}

#[derive(Clone)]
struct FuseFs {
    fs: Arc<CowFs>,
    /// Set once mounted: tells the kernel of changes it did not ask for.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Ask for `FUSE_OVER_IO_URING` at INIT.
    io_uring: bool,
    /// Set at INIT when the kernel granted it.
    ring_negotiated: Arc<AtomicBool>,
}

impl FuseFs {
    /// A write dropped privileges the kernel still has cached: its cached
    /// attributes of `ino` are dropped (offset -1: its pages stay).
    fn attributes_changed(&self, ino: INodeNo) {
        if let Some(notifier) = self.notifier.get() {
            let _ = notifier.inval_inode(ino, -1, 0);
        }
    }

    /// `setattr`; a truncation by an unprivileged caller also clears
    /// setuid/setgid (a change of owner clears them, and with a
    /// truncation drops file capabilities: the core does both).
    fn setattr_as(&self, ino: u64, set: SetAttr, privileged: bool) -> Result<Stat, Errno> {
        let truncates = set.size.is_some();
        let stat = self.fs.setattr(ino, set)?;
        if truncates && !privileged && self.fs.kill_privileges(ino, true)? {
            self.fs.getattr(ino)
        } else {
            Ok(stat)
        }
    }

    /// `mknod` of a file, fifo, socket or device, with the mode and umask
    /// the kernel sent (see [`FuseFs::creation_mode`]).
    fn mknod_as(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Stat, Errno> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFREG | 0 => FileKind::File,
            _ => return Err(Errno(libc::EINVAL)),
        };
        let (perm, inherited) = self.creation_mode(parent, mode, umask, false)?;
        let made = self
            .fs
            .mknod(parent, name, kind, perm, u64::from(rdev), caller);
        self.give_acls(parent, name, made, inherited)
    }

    fn mkdir_as(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Stat, Errno> {
        let (perm, inherited) = self.creation_mode(parent, mode, umask, true)?;
        let made = self.fs.mkdir(parent, name, perm, caller);
        self.give_acls(parent, name, made, inherited)
    }

    /// `create`: the file is made and left open (the kernel releases it).
    fn create_as(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Stat, Errno> {
        let (perm, inherited) = self.creation_mode(parent, mode, umask, false)?;
        let made = self.fs.create(parent, name, perm, caller);
        let given = self.give_acls(parent, name, made.clone(), inherited);
        if let (Ok(stat), Err(_)) = (&made, &given) {
            // Created open: the kernel never gets the handle.
            self.fs.release(stat.ino);
        }
        given
    }

    /// `rename` with the kernel's `RENAME_*` flags (a whiteout is refused).
    fn rename_as(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let flags = RenameFlags {
            noreplace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        self.fs.rename(parent, name, newparent, newname, flags)
    }

    /// `open` with the caller's open flags; `O_TRUNC` truncates here
    /// (`FUSE_ATOMIC_O_TRUNC`) and drops privileges as a truncation does.
    fn open_as(&self, ino: u64, flags: i32, privileged: bool) -> Result<(), Errno> {
        let truncate = flags & libc::O_TRUNC != 0;
        self.fs.open(ino, truncate)?;
        if truncate {
            if let Err(e) = self.fs.kill_privileges(ino, !privileged) {
                self.fs.release(ino);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `write`: the kernel flags a write by a caller without CAP_FSETID to
    /// a setuid/setgid file (`kill_suid_sgid`); capabilities go on any
    /// write.
    fn write_as(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        kill_suid_sgid: bool,
    ) -> Result<usize, Errno> {
        if self.fs.kill_privileges(ino, kill_suid_sgid)? {
            self.attributes_changed(INodeNo(ino));
        }
        self.fs.write_from(ino, offset, data, CachedAbove::Yes)
    }

    /// The names of `ino`'s extended attributes, each ended by a NUL.
    fn listxattr_bytes(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let mut list = Vec::new();
        for name in self.fs.listxattr(ino)? {
            list.extend_from_slice(&name);
            list.push(0);
        }
        Ok(list)
    }

    fn lseek_as(&self, ino: u64, offset: i64, whence: i32) -> Result<u64, Errno> {
        if offset < 0 {
            return Err(Errno(libc::EINVAL));
        }
        self.fs.lseek(ino, offset as u64, whence)
    }

    /// The mode to make a node in `parent` with, from the mode and umask
    /// the caller gave (the mount asks for `FUSE_DONT_MASK`, so the kernel
    /// leaves both to us): the umask applies unless `parent` has a default
    /// ACL, which is then inherited (see [`acl::inherit`]).
    fn creation_mode(
        &self,
        parent: u64,
        mode: u32,
        umask: u32,
        is_dir: bool,
    ) -> Result<(u32, Option<Inherited>), Errno> {
        match self.fs.getxattr(parent, acl::DEFAULT) {
            Ok(default) => {
                let inherited = acl::inherit(&default, mode, is_dir)?;
                Ok((inherited.mode, Some(inherited)))
            }
            Err(e) if e == Errno::ENODATA => Ok((mode & 0o7777 & !umask, None)),
            Err(e) => Err(e),
        }
    }

    /// Gives node `made`, just made as `name` in `parent`, the ACLs it
    /// inherited, and its attributes after them. If that fails the node
    /// is removed again and the call fails as a whole.
    fn give_acls(
        &self,
        parent: u64,
        name: &[u8],
        made: Result<Stat, Errno>,
        inherited: Option<Inherited>,
    ) -> Result<Stat, Errno> {
        let stat = made?;
        let Some(inherited) = inherited else {
            return Ok(stat);
        };
        let given = [
            (acl::ACCESS, &inherited.access),
            (acl::DEFAULT, &inherited.default),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
        .try_for_each(|(attr, value)| self.fs.setxattr(stat.ino, attr, value, XattrMode::Set));
        match given {
            Ok(()) => self.fs.getattr(stat.ino),
            Err(e) => {
                let removed = match stat.kind {
                    FileKind::Dir => self.fs.rmdir(parent, name),
                    _ => self.fs.unlink(parent, name),
                };
                if let Err(r) = removed {
                    tracing::warn!("removing a node whose ACLs could not be set: errno {}", r.0);
                }
                Err(e)
            }
        }
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn attr(stat: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(stat.ino),
        size: stat.size,
        blocks: stat.blocks,
        atime: system_time(stat.atime),
        mtime: system_time(stat.mtime),
        ctime: system_time(stat.ctime),
        crtime: system_time(stat.ctime),
        kind: file_type(stat.kind),
        perm: stat.perm as u16,
        nlink: stat.nlink,
        uid: stat.uid,
        gid: stat.gid,
        rdev: stat.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Whether the caller counts as privileged for dropping setuid/setgid on
/// truncation. The kernel's own test is CAP_FSETID, but fuser 0.17 does not
/// pass on the kernel's verdict for truncation and `open(O_TRUNC)`
/// (`FATTR_KILL_SUIDGID`, `FUSE_OPEN_KILL_SUIDGID`; it does for writes), so
/// this stands in for it: root keeps the bits, anyone else loses them.
fn privileged(req: &Request) -> bool {
    privileged_uid(req.uid())
}

fn privileged_uid(uid: u32) -> bool {
    uid == 0
}

fn reply_entry(result: Result<Stat, Errno>, reply: ReplyEntry) {
    match result {
        Ok(stat) => reply.entry(&ATTR_TTL, &attr(&stat), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timestamp(t)),
    }
}

/// How `setxattr`'s flags ask to set an attribute.
fn xattr_mode(flags: i32) -> XattrMode {
    if flags & libc::XATTR_CREATE != 0 {
        XattrMode::Create
    } else if flags & libc::XATTR_REPLACE != 0 {
        XattrMode::Replace
    } else {
        XattrMode::Set
    }
}

/// What an extended-attribute call answers for a buffer of `size` bytes:
/// the value's size (`size` 0), the value, or ERANGE.
enum Sized {
    Size(u32),
    Value(Vec<u8>),
}

fn sized(size: u32) -> impl Fn(Vec<u8>) -> Result<Sized, Errno> {
    move |value| {
        if size == 0 {
            Ok(Sized::Size(value.len() as u32))
        } else if value.len() <= size as usize {
            Ok(Sized::Value(value))
        } else {
            Err(Errno(libc::ERANGE))
        }
    }
}

fn reply_xattr(result: Result<Result<Sized, Errno>, Errno>, reply: ReplyXattr) {
    match result.and_then(|r| r) {
        Ok(Sized::Size(n)) => reply.size(n),
        Ok(Sized::Value(v)) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Directory operations may run in parallel (the core serialises
        // what needs it), symlink targets may be cached (they never change
        // under an inode), and O_TRUNC arrives with open.
        //
        // READDIRPLUS (in the kernel's "auto" mode: the first read of a
        // directory, and later ones while its entries are being looked
        // up) returns each entry's attributes with the listing, so `ls -l`
        // of a directory the kernel has not seen costs no LOOKUP per
        // entry.
        //
        // HANDLE_KILLPRIV_V2 makes dropping setuid/setgid and
        // `security.capability` on write, truncate and chown this
        // server's job (see `kill_privileges` below), and with it the
        // kernel marks inodes `S_NOSEC`: without it, every WRITE was
        // preceded by a GETXATTR `security.capability` round trip.
        //
        // POSIX_ACL lets the kernel cache each inode's ACLs and enforce
        // them (before, they were stored but not enforced, and asked for
        // again on every `getxattr`: `ls -l` cost two round trips per
        // entry, now one once the inode is known). The core keeps the
        // mode and the access ACL in step, as the kernel expects of a
        // server that sets it (see `cowfs::acl`).
        //
        // DONT_MASK: the kernel sends the mode of a new node before the
        // umask, with the umask beside it, so that a directory's default
        // ACL can be inherited in its place (`creation_mode`).
        let wanted = fuser::InitFlags::FUSE_PARALLEL_DIROPS
            | fuser::InitFlags::FUSE_CACHE_SYMLINKS
            | fuser::InitFlags::FUSE_ATOMIC_O_TRUNC
            | fuser::InitFlags::FUSE_DO_READDIRPLUS
            | fuser::InitFlags::FUSE_READDIRPLUS_AUTO
            | fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | fuser::InitFlags::FUSE_POSIX_ACL
            | fuser::InitFlags::FUSE_DONT_MASK;
        let supported = config.capabilities() & wanted;
        let _ = config.add_capabilities(supported);
        let ring = fuser::InitFlags::FUSE_OVER_IO_URING;
        if self.io_uring && config.capabilities().contains(ring) {
            // A ring entry's payload buffer must hold the largest request.
            if config.set_max_write(ring::PAYLOAD_LEN as u32).is_ok()
                && config.add_capabilities(ring).is_ok()
            {
                self.ring_negotiated.store(true, Ordering::SeqCst);
            }
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(self.fs.lookup(parent.0, name.as_bytes()), reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(stat) => reply.attr(&ATTR_TTL, &attr(&stat)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        match self.setattr_as(ino.0, set, privileged(req)) {
            Ok(stat) => reply.attr(&ATTR_TTL, &attr(&stat)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.mknod_as(parent.0, name.as_bytes(), mode, umask, rdev, caller(req)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.mkdir_as(parent.0, name.as_bytes(), mode, umask, caller(req)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.fs.unlink(parent.0, name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.fs.rmdir(parent.0, name.as_bytes()), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.fs.symlink(
                parent.0,
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                caller(req),
            ),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.rename_as(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(self.fs.link(ino.0, newparent.0, newname.as_bytes()), reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_as(ino.0, flags.0, privileged(req)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            /// This request thread's buffer for READ replies.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.resize(size as usize, 0);
            match self.fs.read_into(ino.0, offset, buf, CachedAbove::Yes) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_suid_sgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.write_as(ino.0, offset, data, kill_suid_sgid) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Answered with ENOSYS: the kernel then stops sending FLUSH on every
    /// `close()`. Nothing is pending at close here (writes are
    /// write-through and locks are the kernel's), so the round trip bought
    /// nothing.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(Errno(libc::ENOSYS)));
    }

    /// No ioctls: ENOTTY, as for a regular file on most filesystems (a
    /// program asking "is this a terminal?" gets its answer without a log
    /// line per call).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(errno(Errno(libc::ENOTTY)));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = if datasync {
            self.fs.fdatasync(ino.0)
        } else {
            self.fs.fsync(ino.0)
        };
        reply_empty(result, reply);
    }

    /// Answered with ENOSYS: the kernel then stops sending OPENDIR and
    /// RELEASEDIR for this mount and opens directories itself with
    /// `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`, so it caches listings and a
    /// directory walk costs two fewer round trips per directory. Every
    /// change to a directory goes through this kernel, which drops its
    /// cached listing then.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(errno(Errno(libc::ENOSYS)));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.fs.readdir_each(ino.0, offset, |entry| {
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                file_type(entry.kind),
                OsStr::from_bytes(entry.name),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let result = self.fs.readdirplus_each(ino.0, offset, |entry, stat| {
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                OsStr::from_bytes(entry.name),
                &ATTR_TTL,
                &attr(stat),
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.fs.fsyncdir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_free,
            s.files,
            s.files_free,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.fs
                .setxattr(ino.0, name.as_bytes(), value, xattr_mode(flags)),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(
            self.fs.getxattr(ino.0, name.as_bytes()).map(sized(size)),
            reply,
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.listxattr_bytes(ino.0).map(sized(size)), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.fs.removexattr(ino.0, name.as_bytes()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self.create_as(parent.0, name.as_bytes(), mode, umask, caller(req));
        match made {
            Ok(stat) => reply.created(
                &ATTR_TTL,
                &attr(&stat),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.fs.fallocate(ino.0, offset, length, mode), reply);
    }

    /// Regular files and directories are always ready: ENOSYS tells the
    /// kernel so once, and it stops asking (gVisor's gofer polls).
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.lseek_as(ino.0, offset, whence) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(e)),
        }
    }
}
