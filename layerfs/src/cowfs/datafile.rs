//! Upper data files, and the bound on how many a mount holds open.
//!
//! The node daemon serves every mount from one process: a sandbox that
//! writes a hundred thousand small files must not exhaust that process's
//! descriptors for everyone. A [`DataFile`] is a data file that exists on
//! disk; its descriptor is a cache, opened on use and closed when its file
//! is released by the sandbox (as a local filesystem keeps no descriptor
//! for a closed file) or when the mount holds more than
//! [`OPEN_DATA_FILES`] (the oldest opened goes first).
//!
//! Write-back errors: Linux reports a failed write-back of a file's pages
//! to the descriptors open on it (and to one opened later, while the
//! inode stays in memory). Closing a descriptor with writes not yet synced
//! could let the inode go, and with it an error that a later `fsync` of
//! the still-open file must report; so a descriptor closed for the bound
//! is first synced, and a failure of that sync is kept and reported by
//! every later sync of the file. A descriptor closed because the sandbox
//! released the file is not synced: the sandbox then has ext4's promise,
//! no more (an error after the last close may be lost with the inode).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Most data files one mount holds open at once (beyond the few in use
/// by requests at that instant). Sandboxes keep files open past it at the
/// cost of a reopen, and of a sync for a file written since its last one.
pub const OPEN_DATA_FILES: usize = 256;

/// Space several mounts draw on together (the sessions of one volume):
/// the bytes their upper layers hold between them, and the most they may
/// hold. A write that would take the total past the limit fails with
/// ENOSPC in whichever mount makes it, as the mount's own quota does.
#[derive(Debug)]
pub struct SharedSpace {
    used: AtomicU64,
    limit: AtomicU64,
}

impl SharedSpace {
    /// Space of at most `limit` bytes, none used.
    pub fn new(limit: u64) -> SharedSpace {
        SharedSpace {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
        }
    }

    /// Bytes the mounts' upper layers hold (and what is [`held`]).
    ///
    /// [`held`]: SharedSpace::hold
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The most they may hold.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit (writes already made stay, even past it).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Counts `bytes` as used until [`SharedSpace::release`] (space that
    /// moves from the mounts to elsewhere, kept taken while it does).
    pub fn hold(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back what [`SharedSpace::hold`] took.
    pub fn release(&self, bytes: u64) {
        self.take_back(bytes);
    }

    fn take_back(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// What the files of one mount share: the bytes charged to its quota, and
/// its open data files.
#[derive(Debug, Default)]
pub(crate) struct MountFiles {
    /// Bytes the upper layer holds, as charged to the quota.
    used: AtomicU64,
    /// Space shared with other mounts, charged too when set.
    shared: OnceLock<Arc<SharedSpace>>,
    /// Data files with an open descriptor, oldest opened first (entries
    /// of files closed since are dropped when met).
    open: Mutex<VecDeque<Weak<DataFile>>>,
    /// Descriptors open.
    open_count: AtomicUsize,
}

impl MountFiles {
    /// Bytes the upper layer holds.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `bytes` more.
    pub(crate) fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        if let Some(shared) = self.shared.get() {
            shared.used.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Charges `bytes` less.
    pub(crate) fn uncharge(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(shared) = self.shared.get() {
            shared.take_back(bytes);
        }
    }

    /// Whether a file charged `old` bytes may be charged `new` within
    /// `quota` and the shared space.
    pub(crate) fn room_for(&self, old: u64, new: u64, quota: u64) -> bool {
        if new <= old {
            return true;
        }
        let used = self.used();
        if used - old.min(used) + new > quota {
            return false;
        }
        match self.shared.get() {
            Some(shared) => shared.used() - old.min(shared.used()) + new <= shared.limit(),
            None => true,
        }
    }

    /// Draws on `space` from now on, with what is charged already; false
    /// if the mount already draws on one.
    pub(crate) fn share(&self, space: Arc<SharedSpace>) -> bool {
        let used = self.used();
        match self.shared.set(space.clone()) {
            Ok(()) => {
                space.used.fetch_add(used, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// The shared space it draws on.
    pub(crate) fn shared(&self) -> Option<&Arc<SharedSpace>> {
        self.shared.get()
    }

    /// Data file descriptors this mount holds open now.
    pub(crate) fn open_descriptors(&self) -> usize {
        self.open_count.load(Ordering::Relaxed)
    }

    /// `file` opened its descriptor: queue it, and close the oldest others
    /// while more than [`OPEN_DATA_FILES`] are open.
    fn opened(&self, file: &Arc<DataFile>) {
        let count = self.open_count.fetch_add(1, Ordering::AcqRel) + 1;
        let mut queue = self.open.lock();
        if !file.queued.swap(true, Ordering::AcqRel) {
            queue.push_back(Arc::downgrade(file));
        }
        if count <= OPEN_DATA_FILES && queue.len() <= 4 * OPEN_DATA_FILES {
            return;
        }
        // Each entry is looked at once: a file in use right now (its
        // descriptor lock taken) goes to the back, and is tried again at
        // the next opening.
        for _ in 0..queue.len() {
            if self.open_count.load(Ordering::Acquire) <= OPEN_DATA_FILES
                && queue.len() <= 2 * OPEN_DATA_FILES
            {
                break;
            }
            let Some(entry) = queue.pop_front() else {
                break;
            };
            let Some(other) = entry.upgrade() else {
                continue;
            };
            if Arc::ptr_eq(&other, file) {
                queue.push_back(entry);
                continue;
            }
            let Some(mut fd) = other.fd.try_write() else {
                queue.push_back(entry);
                continue;
            };
            if fd.is_some() {
                if self.open_count.load(Ordering::Acquire) <= OPEN_DATA_FILES {
                    // Still open, and no need to close it yet.
                    drop(fd);
                    queue.push_back(entry);
                    continue;
                }
                other.close_locked(&mut fd, true);
            }
            drop(fd);
            other.queued.store(false, Ordering::Release);
        }
    }
}

/// An upper data file that exists on disk, with its descriptor opened on
/// demand (see the module's doc).
#[derive(Debug)]
pub(crate) struct DataFile {
    path: PathBuf,
    files: Arc<MountFiles>,
    me: Weak<DataFile>,
    fd: RwLock<Option<File>>,
    /// In the mount's queue of open files.
    queued: AtomicBool,
    /// Writes done through this file; and as many as the last successful
    /// sync covered.
    writes: AtomicU64,
    synced: AtomicU64,
    /// As many writes as were done when the descriptor was last closed
    /// without a sync (the sandbox released the file, or a snapshot
    /// sealed it): those have ext4's promise, no more, and a descriptor
    /// opened again only to read them (a capture storing the file) is
    /// closed with no sync.
    given_up: AtomicU64,
    /// The errno of a failed sync made to close the descriptor: every
    /// later sync of the file reports it.
    failure: AtomicI32,
    /// The sequential run of writes, and of reads by a reader with a page
    /// cache of its own (see [`DataFile::wrote`], [`DataFile::read_through`]).
    writing: SequentialRun,
    reading: SequentialRun,
}

/// A descriptor of a data file, held while it is used.
pub(crate) type Fd<'a> = MappedRwLockReadGuard<'a, File>;

impl DataFile {
    /// A data file at `path`, opened now (made if `create`).
    pub(crate) fn open(
        path: PathBuf,
        files: &Arc<MountFiles>,
        create: bool,
    ) -> std::io::Result<Arc<DataFile>> {
        let file = super::file::open_data_file(&path, create)?;
        let data = DataFile::closed(path, files);
        *data.fd.write() = Some(file);
        files.opened(&data);
        Ok(data)
    }

    /// A data file at `path` that exists, not opened until used.
    pub(crate) fn closed(path: PathBuf, files: &Arc<MountFiles>) -> Arc<DataFile> {
        Arc::new_cyclic(|me| DataFile {
            path,
            files: files.clone(),
            me: me.clone(),
            fd: RwLock::new(None),
            queued: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            failure: AtomicI32::new(0),
            writing: SequentialRun::default(),
            reading: SequentialRun::default(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Its descriptor, for reading (opened again if it was closed).
    pub(crate) fn fd(&self) -> std::io::Result<Fd<'_>> {
        loop {
            if let Ok(fd) = RwLockReadGuard::try_map(self.fd.read(), Option::as_ref) {
                return Ok(fd);
            }
            let mut slot = self.fd.write();
            if slot.is_none() {
                *slot = Some(super::file::open_data_file(&self.path, false)?);
                if let Some(me) = self.me.upgrade() {
                    self.files.opened(&me);
                }
            }
            if let Ok(fd) =
                RwLockReadGuard::try_map(RwLockWriteGuard::downgrade(slot), Option::as_ref)
            {
                return Ok(fd);
            }
        }
    }

    /// Runs `write` on its descriptor and counts it as a write that a
    /// later sync must cover.
    pub(crate) fn write<R>(
        &self,
        write: impl FnOnce(&File) -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        let fd = self.fd()?;
        let result = write(&fd);
        self.writes.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Notes that bytes `offset..end` were written. A sequential writer's
    /// bytes have their write-back to the disk started every
    /// [`WRITE_BEHIND`] bytes, by a background thread: a sandbox streaming
    /// a large file then finds most of it on disk when it calls `fsync`
    /// (the disk works while the writer writes, where it would otherwise
    /// start at the `fsync`), and the host holds less of it dirty. Only a
    /// start: nothing waits, and durability is still given by the syncs.
    /// With `drop_behind` (the writer keeps the bytes in a page cache of
    /// its own), the windows before the one just started also leave the
    /// host's page cache once clean.
    pub(crate) fn wrote(&self, offset: u64, end: u64, drop_behind: bool) {
        let Window::Full { from: behind } = self.writing.advance(offset, end) else {
            return;
        };
        // Pages up to [`DROP_LAG`] before the window started now leave the
        // host's cache: their write-back has had that much writing to
        // finish (see [`DataFile::write_behind`] for those it has not).
        let drop_to = match drop_behind {
            true => behind.saturating_sub(DROP_LAG),
            false => 0,
        };
        self.queue_behind(Stream::Writing, behind..end, drop_to);
    }

    /// Notes that a reader with a page cache of its own (see
    /// [`super::CachedAbove`]) read `offset..end`: a sequential reader's
    /// pages leave the host's cache of the data file [`DROP_LAG`] behind
    /// it, as a FUSE writer's do (see [`DataFile::wrote`]); the kernel
    /// holds them above the mount.
    pub(crate) fn read_through(&self, offset: u64, end: u64) {
        let Window::Full { from: behind } = self.reading.advance(offset, end) else {
            return;
        };
        self.queue_behind(Stream::Reading, end..end, behind.saturating_sub(DROP_LAG));
    }

    /// Hands the write-back of `start` and the drop of `stream`'s pages up
    /// to `drop_to` to the background thread ([`DataFile::write_behind`]).
    fn queue_behind(&self, stream: Stream, start: std::ops::Range<u64>, drop_to: u64) {
        write_behind(WriteBehind {
            file: self.me.clone(),
            stream,
            start,
            drop_to,
        });
    }

    fn run(&self, stream: Stream) -> &SequentialRun {
        match stream {
            Stream::Writing => &self.writing,
            Stream::Reading => &self.reading,
        }
    }

    /// Starts write-back of `job.start` and drops the clean pages of the
    /// stream up to `job.drop_to`, if the descriptor is open and free
    /// (hints: a file being closed or synced needs neither). Pages still
    /// dirty or being written are not dropped, and waiting for them here
    /// would take a write-back error away from the sandbox's next fsync;
    /// while any are left the drop mark stays, so the next job tries them
    /// again.
    fn write_behind(&self, job: &WriteBehind) {
        let Some(fd) = self.fd.try_read() else {
            return;
        };
        let Some(file) = fd.as_ref() else {
            return;
        };
        let fd = file.as_raw_fd();
        let start = job.start.start as libc::off64_t;
        let len = (job.start.end - job.start.start) as libc::off64_t;
        // SAFETY: sync_file_range only reads its integer arguments; the
        // descriptor stays open while the read guard is held.
        // SYNC_FILE_RANGE_WRITE starts write-back and waits for none (a
        // failure of it is reported to the next fsync, as any write-back
        // error).
        if len > 0 {
            unsafe { libc::sync_file_range(fd, start, len, libc::SYNC_FILE_RANGE_WRITE) };
        }
        let dropped_to = &self.run(job.stream).dropped_to;
        let from = dropped_to.load(Ordering::Relaxed);
        if job.drop_to <= from {
            return;
        }
        let len = (job.drop_to - from) as libc::off64_t;
        // SAFETY: as above; POSIX_FADV_DONTNEED drops clean pages only.
        unsafe { libc::posix_fadvise(fd, from as libc::off64_t, len, libc::POSIX_FADV_DONTNEED) };
        if unwritten_pages(fd, from, job.drop_to) == 0 {
            // (A stream started again elsewhere since moved the mark.)
            let _ = dropped_to.compare_exchange(
                from,
                job.drop_to,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// `fdatasync` (or `fsync` without `data_only`) of the data file.
    pub(crate) fn sync(&self, data_only: bool) -> std::io::Result<()> {
        match self.failure.load(Ordering::Acquire) {
            0 => {}
            errno => return Err(std::io::Error::from_raw_os_error(errno)),
        }
        let covered = self.writes.load(Ordering::Acquire);
        let fd = match self.fd() {
            Ok(fd) => fd,
            // Removed since (its file is gone, and recovery never reads
            // it): nothing of it is left to make durable. The journal
            // keeps a file cut shorter to sync; when the file was removed
            // before that sync with its descriptor closed, this is it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if data_only {
            fd.sync_data()?;
        } else {
            fd.sync_all()?;
        }
        self.synced.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Closes the descriptor if it is open and not in use, without a sync
    /// (the sandbox released the file, or a snapshot sealed it).
    pub(crate) fn close_idle(&self) {
        if let Some(mut fd) = self.fd.try_write() {
            self.close_locked(&mut fd, false);
        }
    }

    /// Closes the held descriptor; with `sync_first`, syncs writes not yet
    /// synced before (keeping a failure for every later sync to report).
    fn close_locked(&self, fd: &mut Option<File>, sync_first: bool) {
        let Some(file) = fd.take() else {
            return;
        };
        let writes = self.writes.load(Ordering::Acquire);
        let covered = self
            .synced
            .load(Ordering::Acquire)
            .max(self.given_up.load(Ordering::Acquire));
        if !sync_first {
            self.given_up.fetch_max(writes, Ordering::AcqRel);
        } else if writes > covered {
            match file.sync_data() {
                Ok(()) => {
                    self.synced.fetch_max(writes, Ordering::AcqRel);
                }
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    tracing::error!(
                        "syncing data file {} to close it failed (errno {errno}): every later sync of it fails too",
                        self.path.display()
                    );
                    let _ = self.failure.compare_exchange(
                        0,
                        errno,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
        }
        drop(file);
        self.files.open_count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes of a sequential run of writes between two starts of their
/// write-back (see [`DataFile::wrote`]).
const WRITE_BEHIND: u64 = 8 << 20;

/// How far behind a sequential writer with a page cache of its own its
/// bytes leave the host's page cache (see [`DataFile::wrote`]).
const DROP_LAG: u64 = 4 * WRITE_BEHIND;

/// A sequential run of accesses to a data file, cut into windows of
/// [`WRITE_BEHIND`] bytes.
#[derive(Debug, Default)]
struct SequentialRun {
    /// Where the last access ended, and where the current window starts.
    end: AtomicU64,
    window: AtomicU64,
    /// Up to where the run's pages left the host's page cache: a run
    /// starts its own mark (a reader that follows a writer drops its own
    /// pages, not only those past where the writer's were dropped).
    dropped_to: AtomicU64,
}

/// Which of a data file's runs a [`WriteBehind`] is for.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Writing,
    Reading,
}

/// What an access did to its [`SequentialRun`].
enum Window {
    /// It did not follow the last one: a run starts at it.
    Started,
    /// It followed it, and the window is not full yet.
    Open,
    /// It filled the window that started at `from`; the next starts at its
    /// end.
    Full { from: u64 },
}

impl SequentialRun {
    /// Notes an access to `offset..end` (hints: two accesses at once may
    /// start a run again, which costs a window, nothing more).
    fn advance(&self, offset: u64, end: u64) -> Window {
        if self.end.swap(end, Ordering::AcqRel) != offset {
            self.window.store(offset, Ordering::Relaxed);
            self.dropped_to.store(offset, Ordering::Relaxed);
            return Window::Started;
        }
        let from = self.window.load(Ordering::Relaxed);
        if end.saturating_sub(from) < WRITE_BEHIND {
            return Window::Open;
        }
        self.window.store(end, Ordering::Relaxed);
        Window::Full { from }
    }
}

/// A range of a data file whose write-back to start, and where to drop
/// its stream's clean pages up to (see [`DataFile::wrote`]).
struct WriteBehind {
    file: Weak<DataFile>,
    /// The run whose pages are dropped.
    stream: Stream,
    start: std::ops::Range<u64>,
    drop_to: u64,
}

/// Pages of `fd` in `from..to` that are dirty or being written back
/// (`cachestat(2)`, Linux 6.5; 0 where the kernel has none).
fn unwritten_pages(fd: libc::c_int, from: u64, to: u64) -> u64 {
    /// `struct cachestat`.
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let range = [from, to - from];
    let mut stat = CacheStat::default();
    // SAFETY: cachestat reads a `struct cachestat_range` (two u64s) and
    // writes one `struct cachestat`, both live locals of those layouts;
    // it only reads the descriptor's page cache.
    let rc = unsafe {
        libc::syscall(
            451, // SYS_cachestat on every architecture
            fd,
            range.as_ptr(),
            &mut stat as *mut CacheStat,
            0u32,
        )
    };
    match rc {
        0 => stat.dirty + stat.writeback,
        _ => 0,
    }
}

/// Hands a job to the write-behind thread (dropped if it has none).
fn write_behind(job: WriteBehind) {
    if let Some(sender) = write_behind_thread() {
        let _ = sender.send(job);
    }
}

/// The thread that starts the write-back of ranges [`DataFile::wrote`]
/// hands it, started on first use (or by [`start_shared_threads`]);
/// `None` if it cannot start (then nothing is written behind).
fn write_behind_thread() -> &'static Option<Sender<WriteBehind>> {
    static THREAD: OnceLock<Option<Sender<WriteBehind>>> = OnceLock::new();
    THREAD.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel::<WriteBehind>();
        std::thread::Builder::new()
            .name("layerfs-writeback".into())
            .spawn(move || {
                for job in receive {
                    if let Some(file) = job.file.upgrade() {
                        file.write_behind(&job);
                    }
                }
            })
            .ok()
            .map(|_| send)
    })
}

/// Starts the write-behind thread from the caller (see
/// `file::start_shared_threads`).
pub(crate) fn start_shared_threads() {
    let _ = write_behind_thread();
}

impl Drop for DataFile {
    fn drop(&mut self) {
        if self.fd.get_mut().take().is_some() {
            self.files.open_count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
