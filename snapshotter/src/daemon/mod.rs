//! The node daemon (`snapctl daemon`): owns the store and every mount of
//! one data directory and answers the local API (see [`crate::api`] and
//! `API.md`) on `HOME/snapd.sock`.
//!
//! Threads: one accepts connections, one per connection answers requests,
//! FUSE sessions have their own, one reaps mounts that were unmounted from
//! outside, and one waits for SIGTERM/SIGINT to shut down (unmounting
//! everything).
//!
//! Each mount has a directory `HOME/mounts/ID` holding `mount.json` (its
//! record, written before the mount exists) and `upper/` (its writable
//! layer), and a ref `mount/ID` on its lower tree so that nothing it reads
//! can be collected while it lives. A mount ends with `mount.remove`, with
//! an unmount from outside, or with the daemon; its upper layer is then
//! discarded. A daemon that starts after one that died (SIGKILL, crash)
//! recovers every mount the dead one served from its upper layer's journal
//! and mounts it again where it was; half-made mounts are discarded.
//!
//! The parts: [`mounts`] (the mount table and each mount's life),
//! [`snapshot_ops`] (snapshots, grafts and forks of live mounts),
//! [`memory_ops`] (memory snapshots and their page servers), [`rpc`]
//! (the API connection loop and its errors), [`process`] (the process's
//! limits and pools); this module holds the shared state and `run`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use cas::{ChunkId, RefExpectation, Store};
use layerfs::cowfs::{CowFs, MountConfig};
use layerfs::fuse::{mount, FuseOptions, FuseSession};
use layerfs::ImportOptions;
use parking_lot::Mutex;

use crate::api::{
    self, DaemonInfo, ExportTarget, FrameWriter, MountCreate, MountInfo, Op, RemoteStatus,
    Response, SnapshotCreate, SnapshotFork, SnapshotInfo, SnapshotState, API_VERSION,
};
use crate::exit::{self, InvalidInput};
use crate::output::Output;
use crate::serve9p;
use crate::snapshots::{now_secs, tree_bytes, Catalog, MOUNT_ROOTS_REF_PREFIX};
use crate::store_cmd::open_with;
use remote::{Remote, RemoteConfig, RemoteRef, CONFIG_FILE};

mod memory_ops;
mod mounts;
mod process;
mod remote_ops;
mod rpc;
mod sandbox_ops;
mod snapshot_ops;

pub use mounts::{umount, umount_patiently};
pub use process::tune_allocator;
use process::{check_threads, import_pool, raise_open_file_limit};
pub use remote_ops::{cache_dir as remote_cache_dir, remote_config, RemoteArgs};

/// The furthest a snapshot's expiry may lie ahead (100 years): anything
/// larger is a mistake, and past `u64` seconds it would wrap around.
const MAX_EXPIRE_SECS: u64 = 36_525 * 86_400;

/// Ref name prefix of live mounts' lower trees.
const MOUNT_REF_PREFIX: &str = "mount/";

/// A mount the daemon serves.
struct LiveMount {
    info: MountInfo,
    fs: Arc<CowFs>,
    session: Option<FuseSession>,
    /// Its newest filesystem snapshot (the next one's parent).
    last_snapshot: Option<String>,
}

/// The daemon's shared state.
struct Daemon {
    home: PathBuf,
    store: Store,
    mounts: Mutex<BTreeMap<String, LiveMount>>,
    next_serial: AtomicU64,
    catalog: Arc<Catalog>,
    /// Serializes snapshot calls (so layers are sealed in order).
    snapshot_lock: Mutex<()>,
    /// The daemon itself, for threads that outlive a request.
    me: std::sync::OnceLock<std::sync::Weak<Daemon>>,
    /// 9P listeners (set right after start: they find mounts through `me`).
    p9: std::sync::OnceLock<serve9p::Service>,
    /// Page servers of memory snapshots, by socket.
    memory_servers: Mutex<BTreeMap<PathBuf, memory_ops::ServedMemory>>,
    /// Running sandboxes, by id.
    sandboxes: Mutex<BTreeMap<String, sandbox_ops::LiveSandbox>>,
    /// The containers' first processes, reaped when they exit (the daemon
    /// is their subreaper).
    runtime_pids: Arc<Mutex<std::collections::HashSet<i64>>>,
    /// The bucket shared with other nodes, if one is configured.
    remote: Option<Remote>,
}

/// What a new mount shows.
enum MountSource {
    /// A stored tree (an image, a durable snapshot).
    Tree(ChunkId),
    /// A snapshot still being stored, mounted from its capture.
    Capture(String, Arc<layerfs::cowfs::Capture>),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Daemon {
    fn mount_dir(&self, id: &str) -> PathBuf {
        self.home.join("mounts").join(id)
    }

    fn new_id(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&std::process::id().to_le_bytes());
        hasher.update(
            &self
                .next_serial
                .fetch_add(1, Ordering::Relaxed)
                .to_le_bytes(),
        );
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        hasher.update(&nanos.to_le_bytes());
        hasher.finalize().to_hex()[..12].to_string()
    }

    /// Removes what a mount left behind: its refs and its directory. Its
    /// snapshots still being stored read its lower trees: they finish first.
    fn discard(&self, id: &str) {
        self.catalog.wait_for_mount(id);
        let name = format!("{MOUNT_REF_PREFIX}{id}");
        if matches!(self.store.get_ref(&name), Ok(Some(_))) {
            if let Err(e) = self.store.delete_ref(&name, RefExpectation::Any) {
                tracing::warn!(mount = id, "removing the mount's ref: {e}");
            }
        }
        self.catalog.forget_mount(id);
        let dir = self.mount_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(mount = id, "removing {}: {e}", dir.display());
            }
        }
    }

    fn info(&self) -> DaemonInfo {
        DaemonInfo {
            api: vec![API_VERSION],
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            home: self.home.clone(),
            mounts: self.mounts.lock().len(),
        }
    }

    fn p9(&self) -> &serve9p::Service {
        self.p9.get().expect("set at start")
    }

    /// Unmounts everything (lazily: shutting down must not hang on a busy
    /// mount) and discards the upper layers: a stopped daemon ends its
    /// sandboxes' mounts. (A daemon that dies instead keeps them: the next
    /// one restores them.)
    fn shutdown(&self) {
        self.stop_sandboxes();
        self.p9().stop_all();
        self.stop_memory_servers();
        let mounts = std::mem::take(&mut *self.mounts.lock());
        for (id, mut mount) in mounts {
            if let Some(mountpoint) = &mount.info.mountpoint {
                let _ = umount(mountpoint, libc::MNT_DETACH);
            }
            drop(mount.session.take());
            self.discard(&id);
        }
    }
}

/// Refuses label keys that could not be written back as `k=v`.
fn check_labels(labels: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for key in labels.keys() {
        if key.is_empty() || key.contains('=') {
            bail!("label keys must be non-empty and contain no '=' (got '{key}')");
        }
    }
    Ok(())
}

/// `snapctl daemon` options.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Memory for decompressed, verified chunks kept for repeated reads
    /// (what serves a 9P client's re-reads of image files, which have no
    /// kernel page cache on this side). Default: 1/16 of the machine's
    /// memory, between 128 MiB and 2 GiB.
    #[arg(long, value_parser = crate::output::parse_size, value_name = "SIZE")]
    pub chunk_cache: Option<u64>,
    /// Memory for the index's block cache (RocksDB's; it bounds what the
    /// index keeps in memory besides its two 16 MiB memtables).
    #[arg(long, value_parser = crate::output::parse_size, value_name = "SIZE", default_value = "64M")]
    pub index_cache: u64,
    /// Longest a 9P connection whose client comes back quickly polls for
    /// its next request before sleeping, in microseconds (0: never poll).
    /// Polling trades some CPU for not paying a thread wake-up per
    /// request; at most one connection per four CPUs polls at once.
    /// At most 10,000 (10 ms).
    #[arg(
        long = "9p-poll-us",
        value_name = "MICROS",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(0..=10_000)
    )]
    pub p9_poll_us: u64,
    /// How many nice steps lower the daemon works on a 9P session's
    /// requests while that client has others queued (it pipelines), so
    /// that interactive clients are served first when every CPU is busy
    /// (0..=19; 0: everyone at the daemon's priority).
    #[arg(
        long = "9p-queued-nice",
        value_name = "STEPS",
        default_value_t = 10,
        value_parser = clap::value_parser!(i32).range(0..=19)
    )]
    pub p9_queued_nice: i32,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// The default chunk cache: 1/16 of physical memory, within 128 MiB..2 GiB.
pub fn default_chunk_cache() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let memory = if pages > 0 && page > 0 {
        pages as u64 * page as u64
    } else {
        0
    };
    (memory / 16).clamp(128 << 20, 2 << 30)
}

/// `snapctl daemon`: runs the node daemon of `home` in the foreground.
pub fn run(args: DaemonArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    raise_open_file_limit();
    tune_allocator();
    let socket = api::socket_path(home);
    if UnixStream::connect(&socket).is_ok() {
        bail!(
            "a node daemon already serves {} (socket {})",
            home.display(),
            socket.display()
        );
    }
    let store = open_with(
        home,
        cas::OpenOptions {
            chunk_cache_bytes: args.chunk_cache.unwrap_or_else(default_chunk_cache),
            index_cache_bytes: args.index_cache,
            ..cas::OpenOptions::default()
        },
    )?;
    let remote = match remote_config(home, &args.remote)? {
        Some(config) => {
            let remote = Remote::open(&config, &remote_cache_dir(home), store.config())
                .with_context(|| format!("opening the bucket {}", config.url))?;
            remote.attach(&store);
            Some(remote)
        }
        None => None,
    };
    let listener = crate::api_server::bind_socket(&socket, "node daemon")?;
    let catalog = Catalog::open(home, store.clone()).context("opening the snapshot catalog")?;
    let daemon = Arc::new(Daemon {
        home: home.to_path_buf(),
        store,
        mounts: Mutex::new(BTreeMap::new()),
        next_serial: AtomicU64::new(0),
        catalog,
        snapshot_lock: Mutex::new(()),
        me: std::sync::OnceLock::new(),
        p9: std::sync::OnceLock::new(),
        memory_servers: Mutex::new(BTreeMap::new()),
        sandboxes: Mutex::new(BTreeMap::new()),
        runtime_pids: Arc::default(),
        remote,
    });
    sandbox_ops::become_subreaper();
    {
        let known = daemon.runtime_pids.clone();
        std::thread::Builder::new()
            .name("orphans".into())
            .spawn(move || sandbox_ops::reap_orphans(&known))?;
    }
    let _ = daemon.me.set(Arc::downgrade(&daemon));
    {
        let me = Arc::downgrade(&daemon);
        let find: serve9p::FindMount = Arc::new(move |key| me.upgrade()?.find_fs(key));
        let poll = p9server::PollLimits {
            max_wait: std::time::Duration::from_micros(args.p9_poll_us),
            max_pollers: std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1)),
        };
        let _ = daemon
            .p9
            .set(serve9p::Service::new(find, poll, args.p9_queued_nice));
    }
    crate::home::make_durable_dir(&home.join("mounts"))?;
    daemon
        .recover()
        .context("cleaning up after the previous daemon")?;
    daemon
        .recover_sandboxes()
        .context("ending the sandboxes of the previous daemon")?;

    {
        let daemon = daemon.clone();
        crate::api_server::stop_on_signal(socket.clone(), "shutting down", move || {
            daemon.shutdown()
        })?;
    }
    {
        let daemon = daemon.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                for round in 0u64.. {
                    std::thread::sleep(Duration::from_millis(500));
                    daemon.reap();
                    daemon.reap_sandboxes();
                    if round % 4 == 0 {
                        daemon.catalog.expire();
                    }
                }
            })?;
    }
    out.note(&format!(
        "node daemon for {} listening on {} (API version {API_VERSION})",
        home.display(),
        socket.display()
    ));
    crate::api_server::accept_connections(listener, daemon, MAX_API_CONNECTIONS);
    Ok(exit::code(exit::OK))
}

/// Most API connections served at once (each has a thread); more are
/// answered with an error and closed.
pub const MAX_API_CONNECTIONS: usize = 128;

/// Most FUSE request threads a mount may have.
pub const MAX_MOUNT_THREADS: usize = 64;
