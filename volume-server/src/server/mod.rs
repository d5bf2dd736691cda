//! The volume server daemon (`volume-server`): owns one data directory's
//! store and every session of its volumes, and answers the volume API
//! (`API.md`, [`snapshotter::volume_api`]) on `HOME/volumes.sock`.
//!
//! A session is a FUSE mount (`volume.mount`) or one 9P connection's view
//! of one volume it attached (`serve9p.start`). Each has a directory
//! `HOME/sessions/ID` holding `session.json` (its record, durable before
//! the session exists) and `upper/` (its copy-on-write layer and
//! journal). A session ends — is committed, durably, and then removed —
//! when it is unmounted (`volume.umount`, or `umount` from outside), when
//! its 9P connection ends (the client closed it or was killed), and when
//! the server gets SIGTERM. A session whose commit fails is kept, listed
//! with its error, and tried again. A server that starts after one that
//! died (SIGKILL, a crash, a power cut) recovers each session's upper
//! layer from its journal (everything the sandbox fsync'd) and commits
//! it. While sessions live, a background thread commits each one every
//! `--autocommit-secs` seconds.
//!
//! The parts: [`sessions`] (the session table and each session's life),
//! [`p9`] (9P listeners bound to volumes), [`rpc`] (answering each
//! operation); this module holds the shared state and `run`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::{Condvar, Mutex};
use snapshotter::output::Output;
use snapshotter::volume_api::{self, VOLUME_API_VERSION};

use crate::catalog::Volumes;

mod p9;
mod rpc;
mod sessions;
mod sync;

pub use sessions::SessionRecord;

/// Most API connections served at once.
pub const MAX_API_CONNECTIONS: usize = 128;

/// `volume-server` options.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Seconds between background commits of each session (0: commit
    /// only when asked and at teardown).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub autocommit_secs: u64,
    /// Memory for decompressed, verified chunks kept for repeated reads.
    /// Default: 1/16 of the machine's memory, between 128 MiB and 2 GiB.
    #[arg(long, value_parser = snapshotter::output::parse_size, value_name = "SIZE")]
    pub chunk_cache: Option<u64>,
    /// Commits each volume keeps (its head and those before it); older
    /// ones are reclaimed by GC. At least 1.
    #[arg(long, value_name = "N", default_value_t = crate::KEEP_COMMITS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_commits: u64,
    /// Seconds between background GC runs, which reclaim what no volume,
    /// kept commit or live session reaches (0: only `snapctl volume gc`).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub gc_interval_secs: u64,
    /// Seconds between syncs of the volumes kept in step with the bucket
    /// (`snapctl push volume`, `snapctl pull volume`); each commit also
    /// syncs at once.
    #[arg(long, value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_secs: u64,
    #[command(flatten)]
    pub remote: snapshotter::daemon::RemoteArgs,
}

/// Counts teardowns under way, so that a stopping server waits for them.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    done: Condvar,
}

impl InFlight {
    fn begin(&self) {
        *self.count.lock() += 1;
    }

    fn end(&self) {
        let mut count = self.count.lock();
        *count -= 1;
        self.done.notify_all();
    }

    /// Waits until none is under way or `limit` passed; whether none is.
    fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut count = self.count.lock();
        while *count > 0 {
            if self.done.wait_until(&mut count, deadline).timed_out() {
                return *count == 0;
            }
        }
        true
    }
}

/// The server's shared state.
pub struct VolumeServer {
    home: PathBuf,
    volumes: Arc<Volumes>,
    sessions: Mutex<BTreeMap<String, sessions::Live>>,
    next_serial: AtomicU64,
    /// Teardowns (commits of ending sessions) under way.
    closing: InFlight,
    /// 9P connections alive (each ends its sessions when it goes).
    connections: InFlight,
    listeners: Mutex<Vec<p9::Entry>>,
    /// The 9P connections alive (to find those whose client hung up).
    live_connections: Mutex<Vec<Weak<p9::Connection>>>,
    runtime: OnceLock<tokio::runtime::Runtime>,
    pollers: Arc<p9server::Pollers>,
    autocommit_secs: u64,
    gc_interval_secs: u64,
    /// The bucket's volumes, when the server has one.
    sync: Option<Arc<crate::remote_sync::VolumeSync>>,
    sync_secs: u64,
    nudge: sync::Nudge,
    stopping: AtomicBool,
    me: OnceLock<Weak<VolumeServer>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl VolumeServer {
    fn sessions_dir(&self) -> PathBuf {
        self.home.join("sessions")
    }

    fn session_dir(&self, id: &str) -> PathBuf {
        self.sessions_dir().join(id)
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
        format!("s{}", &hasher.finalize().to_hex()[..12])
    }

    fn me(&self) -> Arc<VolumeServer> {
        self.me
            .get()
            .and_then(Weak::upgrade)
            .expect("the server lives while its threads run")
    }

    fn info(&self) -> volume_api::ServerInfo {
        volume_api::ServerInfo {
            api: vec![VOLUME_API_VERSION],
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            home: self.home.clone(),
            volumes: self.volumes.list().map(|v| v.len()).unwrap_or(0),
            sessions: self.sessions.lock().len(),
            autocommit_secs: self.autocommit_secs,
            keep_commits: self.volumes.keep_commits(),
            gc_interval_secs: self.gc_interval_secs,
            remote: self.sync.as_ref().map(|s| s.remote().config().url.clone()),
            sync_secs: self.sync_secs,
        }
    }

    /// Runs the store's GC: what no volume's head or kept commits, no live
    /// session (its refs, and the trees its open files may read) and no
    /// operation in flight reaches is reclaimed.
    fn collect_garbage(&self) -> anyhow::Result<cas::GcReport> {
        let report = self
            .volumes
            .store()
            .gc()
            .context("collecting the volume store's garbage")?;
        tracing::info!(?report, "volume store GC");
        Ok(report)
    }

    /// Stops: no new sessions; 9P listeners closed (their connections'
    /// sessions commit); FUSE sessions unmounted (lazily: a busy mount
    /// must not hang the stop) and committed; returns once every commit
    /// is durable or has failed (a failed one keeps its upper layer for
    /// the next start).
    fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.listeners.lock().clear();
        if !self.connections.wait_idle(Duration::from_secs(60)) {
            tracing::error!("9P connections did not end within 60 s; stopping without them");
        }
        let ids: Vec<String> = self.sessions.lock().keys().cloned().collect();
        for id in ids {
            match self.end_session(&id, true) {
                Ok(_) => {}
                // Ended meanwhile (unmounted from outside, its 9P client
                // gone): already committed by whoever ended it.
                Err(e) if sessions::is_not_found(&e) => {}
                Err(e) => tracing::error!(session = id, "{e:#}"),
            }
        }
        self.closing.wait_idle(Duration::from_secs(600));
        // What the sessions committed goes to the bucket before the stop.
        if self.sync.is_some() {
            match self.sync_volumes(None) {
                Ok(results) => {
                    for r in results.iter().filter(|r| r.error.is_some()) {
                        tracing::error!(volume = r.volume, "last sync failed: {:?}", r.error);
                    }
                }
                Err(e) => tracing::error!("last sync with the bucket: {e:#}"),
            }
        }
    }
}

/// `volume-server`: runs the volume server of `home` in the foreground.
pub fn run(args: ServerArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let socket = volume_api::socket_path(home);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "a volume server already serves {} (socket {})",
            home.display(),
            socket.display()
        );
    }
    snapshotter::home::make_durable_dir(home)?;
    let store_dir = home.join("store");
    let options = cas::OpenOptions {
        chunk_cache_bytes: args
            .chunk_cache
            .unwrap_or_else(snapshotter::daemon::default_chunk_cache),
        ..cas::OpenOptions::default()
    };
    if !store_dir.join(cas::MARKER_FILE).exists() {
        drop(
            cas::Store::init(&store_dir, cas::StoreConfig::default())
                .with_context(|| format!("creating the volume store at {}", store_dir.display()))?,
        );
    }
    let store = cas::Store::open(&store_dir, options)
        .with_context(|| format!("opening the volume store at {}", store_dir.display()))?;
    let remote = match snapshotter::daemon::remote_config(home, &args.remote)? {
        Some(config) => {
            let cache = snapshotter::daemon::remote_cache_dir(home);
            let remote = remote::Remote::open(&config, &cache, store.config())
                .with_context(|| format!("opening the bucket {}", config.url))?;
            remote.attach(&store);
            Some(remote)
        }
        None => None,
    };
    let volumes = Arc::new(Volumes::with_retention(store, args.keep_commits as usize));
    let listener = snapshotter::api_server::bind_socket(&socket, "volume server")?;
    let server = Arc::new(VolumeServer {
        home: home.to_path_buf(),
        sync: remote.map(|r| Arc::new(crate::remote_sync::VolumeSync::new(volumes.clone(), r))),
        sync_secs: args.sync_secs,
        nudge: sync::Nudge::default(),
        volumes,
        sessions: Mutex::new(BTreeMap::new()),
        next_serial: AtomicU64::new(0),
        closing: InFlight::default(),
        connections: InFlight::default(),
        listeners: Mutex::new(Vec::new()),
        live_connections: Mutex::new(Vec::new()),
        runtime: OnceLock::new(),
        pollers: Arc::default(),
        autocommit_secs: args.autocommit_secs,
        gc_interval_secs: args.gc_interval_secs,
        stopping: AtomicBool::new(false),
        me: OnceLock::new(),
    });
    let _ = server.me.set(Arc::downgrade(&server));
    snapshotter::home::make_durable_dir(&server.sessions_dir())?;
    server
        .recover()
        .context("committing what the previous server left")?;

    {
        let server = server.clone();
        snapshotter::api_server::stop_on_signal(
            socket.clone(),
            "committing every session, then stopping",
            move || server.shutdown(),
        )?;
    }
    {
        let server = server.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                let mut last_commit = std::time::Instant::now();
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    server.reap();
                    let every = server.autocommit_secs;
                    if every > 0 && last_commit.elapsed() >= Duration::from_secs(every) {
                        server.autocommit();
                        last_commit = std::time::Instant::now();
                    }
                }
            })?;
    }
    if args.gc_interval_secs > 0 {
        let server = server.clone();
        let every = Duration::from_secs(args.gc_interval_secs);
        std::thread::Builder::new()
            .name("gc".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                if server.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = server.collect_garbage() {
                    tracing::error!("{e:#}");
                }
            })?;
    }
    if server.sync.is_some() {
        let server = server.clone();
        std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || server.sync_loop())?;
    }
    out.note(&format!(
        "volume server for {} listening on {} (API version {VOLUME_API_VERSION})",
        home.display(),
        socket.display()
    ));
    snapshotter::api_server::accept_connections(listener, server, MAX_API_CONNECTIONS);
    Ok(snapshotter::exit::code(snapshotter::exit::OK))
}

/// Writes `bytes` to `path` durably (a temporary file, synced, renamed,
/// the directory synced).
fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
