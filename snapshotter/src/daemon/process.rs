//! The daemon process's resources: the import pool, the open-file limit,
//! lazily mapped large buffers, the thread-count check.

use super::*;

/// Imports read archives and directories the daemon does not control
/// (hostile ones too): they run on two threads of their own at the lowest
/// priority (nice 19), so the threads serving mounts come first; a third
/// import waits its turn.
pub(super) fn import_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .thread_name(|_| "import".into())
            .start_handler(|_| {
                // SAFETY: gettid has no arguments; setpriority with
                // PRIO_PROCESS and a thread id changes only that thread's
                // nice value and touches no memory.
                let lowered = unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19)
                };
                if lowered != 0 {
                    tracing::warn!("could not lower the priority of an import thread");
                }
            })
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!("no pool of import threads ({e}); imports share the global pool");
                rayon::ThreadPoolBuilder::new()
                    .build()
                    .expect("a rayon pool with default settings")
            })
    })
}

/// Each mount holds up to `layerfs::cowfs::OPEN_DATA_FILES` upper data
/// files open (those its sandbox keeps open, beyond that reopened on
/// use), besides its journal and FUSE channel: the daemon takes all the
/// open-file allowance it may.
pub(super) fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

/// Allocator settings for a daemon that serves mounts and commits:
///
/// - Every FUSE session allocates a zeroed 16 MiB request buffer. glibc
///   raises its mmap threshold after large blocks are freed, after which
///   such buffers come from the heap and are zeroed page by page (a mount
///   then costs milliseconds of memset and 16 MiB of memory). A fixed
///   threshold keeps them fresh anonymous mappings: zero pages, touched
///   only as far as requests fill them.
/// - A capture stores its directories on worker threads whose heaps grow
///   and shrink by megabytes each commit; with glibc's default trim
///   threshold every shrink gives the pages back and the next commit
///   faults them in again (a tenth of a large commit's CPU, measured). A
///   32 MiB threshold keeps that much free memory per heap instead.
///
/// Call before the threads start allocating.
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator tuning; called before the
    // daemon's threads start allocating large blocks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// A mount's FUSE thread count, if given, is 1..=[`MAX_MOUNT_THREADS`].
pub(super) fn check_threads(threads: Option<usize>) -> anyhow::Result<()> {
    match threads {
        Some(n) if n == 0 || n > MAX_MOUNT_THREADS => Err(crate::exit::InvalidInput(format!(
            "a mount has 1 to {MAX_MOUNT_THREADS} FUSE threads, not {n}"
        ))
        .into()),
        _ => Ok(()),
    }
}
