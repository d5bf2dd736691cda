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

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use cas::{ChunkId, RefExpectation, Store};
use layerfs::cowfs::{CowFs, MountConfig};
use layerfs::fuse::{mount, BackgroundSession, FuseOptions};
use layerfs::ImportOptions;
use parking_lot::Mutex;

use crate::api::{
    self, DaemonInfo, ExportTarget, FrameWriter, MountCreate, MountInfo, Op, RemoteError, Response,
    SnapshotCreate, SnapshotFork, SnapshotInfo, SnapshotState, API_VERSION,
};
use crate::exit;
use crate::output::Output;
use crate::serve9p;
use crate::snapshots::{now_secs, tree_bytes, Catalog, MOUNT_ROOTS_REF_PREFIX};
use crate::store_cmd::open_with;

/// The furthest a snapshot's expiry may lie ahead (100 years): anything
/// larger is a mistake, and past `u64` seconds it would wrap around.
const MAX_EXPIRE_SECS: u64 = 36_525 * 86_400;

/// Ref name prefix of live mounts' lower trees.
const MOUNT_REF_PREFIX: &str = "mount/";

/// A mount the daemon serves.
struct LiveMount {
    info: MountInfo,
    fs: Arc<CowFs>,
    session: Option<BackgroundSession>,
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

fn remote_error(error: &anyhow::Error) -> RemoteError {
    let code = exit::code_for(error);
    RemoteError {
        kind: exit::kind_name(code).into(),
        code,
        message: format!("{error:#}"),
    }
}

fn answer(result: anyhow::Result<serde_json::Value>) -> Response {
    match result {
        Ok(value) => Response {
            api: API_VERSION,
            ok: true,
            result: Some(value),
            error: None,
        },
        Err(error) => Response {
            api: API_VERSION,
            ok: false,
            result: None,
            error: Some(remote_error(&error)),
        },
    }
}

/// An invalid request: exit code class "invalid input".
fn invalid(message: String) -> Response {
    Response {
        api: API_VERSION,
        ok: false,
        result: None,
        error: Some(RemoteError {
            kind: exit::kind_name(exit::INVALID_INPUT).into(),
            code: exit::INVALID_INPUT,
            message,
        }),
    }
}

/// `umount2(path, flags)`.
fn umount(path: &Path, flags: i32) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path; umount2 touches no memory of ours.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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

    /// Takes over what a daemon that died left: each mount whose upper
    /// layer has a journal is recovered and mounted again at its mount
    /// point (the dead FUSE mount there is detached first); half-made
    /// mounts are discarded.
    fn recover(&self) -> anyhow::Result<()> {
        let dir = self.home.join("mounts");
        let mut found: Vec<String> = Vec::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                if let Some(id) = entry.file_name().to_str() {
                    found.push(id.to_string());
                }
            }
        }
        for (name, _) in self.store.list_refs(MOUNT_REF_PREFIX)? {
            if let Some(id) = name.strip_prefix(MOUNT_REF_PREFIX) {
                found.push(id.to_string());
            }
        }
        found.sort();
        found.dedup();
        for id in found {
            let record = self.mount_dir(&id).join("mount.json");
            let info = fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<MountInfo>(&b).ok());
            let Some(info) = info else {
                tracing::warn!(mount = id, "discarding a half-made mount");
                self.discard(&id);
                continue;
            };
            // A FUSE mount whose server died answers ENOTCONN; detach it.
            if let Some(mountpoint) = &info.mountpoint {
                if let Err(e) = fs::metadata(mountpoint) {
                    if e.raw_os_error() == Some(libc::ENOTCONN) {
                        let _ = umount(mountpoint, libc::MNT_DETACH);
                    }
                }
            }
            match self.restore_mount(&info) {
                Ok(mut live) => {
                    live.last_snapshot = self.catalog.latest_of_mount(&id);
                    self.mounts.lock().insert(id, live);
                }
                Err(e) => tracing::error!(
                    mount = id,
                    mountpoint = %info.place(),
                    "could not restore the mount: {e:#}; its upper layer stays in {} \
                     and the next daemon start tries again",
                    info.upper.display()
                ),
            }
        }
        // Roots of mounts that no longer exist.
        for (name, _) in self.store.list_refs(MOUNT_ROOTS_REF_PREFIX)? {
            let id = name.trim_start_matches(MOUNT_ROOTS_REF_PREFIX);
            if !self.mount_dir(id).exists() {
                self.catalog.forget_mount(id);
            }
        }
        Ok(())
    }

    /// Recovers a mount's upper layer from its journal and serves it again.
    fn restore_mount(&self, info: &MountInfo) -> anyhow::Result<LiveMount> {
        let mut info = info.clone();
        if info.tree.is_empty() {
            // Made from a snapshot being stored, not adopted yet.
            let snapshot = info.snapshot.clone().unwrap_or_default();
            let (tree, _) = match self.catalog.tree_of(&snapshot) {
                Ok(found) => found,
                Err(e) => {
                    self.discard(&info.id);
                    return Err(e.context(format!(
                        "mount {} was made from snapshot {snapshot} before it was stored, \
                         and it never was; the mount is discarded",
                        info.id
                    )));
                }
            };
            info.tree = tree.to_hex();
            self.store.set_ref(
                &format!("{MOUNT_REF_PREFIX}{}", info.id),
                tree,
                RefExpectation::Any,
            )?;
            self.write_record(&info)?;
        }
        let info = &info;
        let tree: ChunkId = info
            .tree
            .parse()
            .map_err(|e| anyhow!("mount record names a bad tree id: {e}"))?;
        let config = MountConfig {
            upper_dir: info.upper.clone(),
            quota_bytes: info.quota_bytes,
            inode_quota: info.inode_quota,
        };
        let (fs, report) = if info.upper.join("journal").exists() {
            CowFs::recover(self.store.clone(), tree, config)
                .context("replaying the upper layer's journal")?
        } else {
            // Its record is durable but nothing inside it ever was (a new
            // mount's journal costs no sync until its first fsync): it
            // comes back as it began, empty.
            match fs::remove_dir_all(&info.upper) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("clearing {}", info.upper.display()))
                }
            }
            let fs = CowFs::new(self.store.clone(), tree, config)
                .context("starting the mount's upper layer again")?;
            (fs, layerfs::cowfs::RecoveryReport::default())
        };
        let fs = Arc::new(fs);
        let options = FuseOptions {
            fs_name: format!("strata:{}", info.id),
            ..FuseOptions::default()
        };
        let session = match &info.mountpoint {
            Some(mountpoint) => Some(
                mount(fs.clone(), mountpoint, &options)
                    .with_context(|| format!("mounting on {}", mountpoint.display()))?,
            ),
            None => None,
        };
        tracing::info!(
            mount = info.id,
            mountpoint = %info.place(),
            records = report.records,
            skipped = report.skipped,
            torn_bytes = report.torn_bytes,
            "restored the mount of image '{}'",
            info.image
        );
        Ok(LiveMount {
            info: info.clone(),
            fs,
            session,
            last_snapshot: None,
        })
    }

    /// Ends mounts that were unmounted from outside (their FUSE session
    /// finished).
    fn reap(&self) {
        let ended: Vec<LiveMount> = {
            let mut mounts = self.mounts.lock();
            let ids: Vec<String> = mounts
                .iter()
                .filter(|(_, m)| {
                    // Only FUSE mounts end from outside.
                    m.info.mountpoint.is_some()
                        && m.session.as_ref().is_none_or(|s| s.guard.is_finished())
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| mounts.remove(id)).collect()
        };
        for mut mount in ended {
            if let Some(session) = mount.session.take() {
                let _ = session.join();
            }
            tracing::info!(mount = mount.info.id, "unmounted from outside; ending it");
            self.p9().forget_mount(&mount.info.id);
            self.discard(&mount.info.id);
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

    /// Makes a mount and makes it durable: its record and its name in
    /// `HOME/mounts` survive a power cut once this returns.
    fn mount_create(&self, args: MountCreate) -> anyhow::Result<MountInfo> {
        let info = self.mount_start(args)?;
        if let Err(e) = self.sync_mounts_dir() {
            let _ = self.mount_remove(&info.id);
            return Err(e);
        }
        Ok(info)
    }

    /// Makes `HOME/mounts`' entries durable (the names of new mounts).
    fn sync_mounts_dir(&self) -> anyhow::Result<()> {
        let dir = self.home.join("mounts");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    }

    /// Makes a mount; its name in `HOME/mounts` is not yet durable (see
    /// [`Daemon::mount_create`]).
    fn mount_start(&self, args: MountCreate) -> anyhow::Result<MountInfo> {
        check_threads(args.threads)?;
        if let Some(mountpoint) = &args.mountpoint {
            if !mountpoint.is_absolute() {
                bail!(
                    "the mount point must be an absolute path, not {}",
                    mountpoint.display()
                );
            }
            let meta = fs::metadata(mountpoint)
                .with_context(|| format!("mount point {}", mountpoint.display()))?;
            if !meta.is_dir() {
                bail!("mount point {} is not a directory", mountpoint.display());
            }
        }
        let (source, image) = match &args.snapshot {
            Some(id) => match self.catalog.capture_of(id).filter(|c| c.restorable()) {
                // Still being stored: mounted at once from its capture.
                Some(capture) => (
                    MountSource::Capture(id.clone(), capture),
                    self.catalog.get(id)?.image,
                ),
                None => {
                    let (tree, snapshot) = self.catalog.tree_of(id)?;
                    (MountSource::Tree(tree), snapshot.image)
                }
            },
            None => (
                MountSource::Tree(layerfs::image_tree(&self.store, &args.image)?),
                args.image.clone(),
            ),
        };
        let mut mounts = self.mounts.lock();
        if let Some(other) = mounts
            .values()
            .find(|m| m.info.mountpoint.is_some() && m.info.mountpoint == args.mountpoint)
        {
            bail!(
                "{} already serves mount {}; unmount it first",
                other.info.place(),
                other.info.id
            );
        }
        let id = self.new_id();
        let dir = self.mount_dir(&id);
        let info = MountInfo {
            id: id.clone(),
            image,
            tree: match &source {
                MountSource::Tree(tree) => tree.to_hex(),
                MountSource::Capture(..) => String::new(),
            },
            mountpoint: args.mountpoint.clone(),
            upper: dir.join("upper"),
            quota_bytes: args.quota_bytes,
            used_bytes: 0,
            inode_quota: args
                .inode_quota
                .unwrap_or(layerfs::cowfs::DEFAULT_INODE_QUOTA),
            inodes_made: 0,
            created: unix_now(),
            snapshot: args.snapshot.clone(),
        };
        let result = self.start_mount(&info, &source, args.threads);
        match result {
            Ok((fs, session)) => {
                if let MountSource::Capture(snapshot, _) = &source {
                    self.adopt_tree_when_stored(&id, snapshot);
                }
                mounts.insert(
                    id,
                    LiveMount {
                        info: info.clone(),
                        fs,
                        session,
                        last_snapshot: None,
                    },
                );
                Ok(info)
            }
            Err(e) => {
                self.discard(&id);
                Err(e)
            }
        }
    }

    /// For a mount made from a capture: once its snapshot is stored, its
    /// ref and record name the snapshot's tree (its journal replays over
    /// that tree after a crash).
    fn adopt_tree_when_stored(&self, mount: &str, snapshot: &str) {
        let Some(daemon) = self.me.get().cloned() else {
            return;
        };
        let (id, snapshot) = (mount.to_string(), snapshot.to_string());
        let mount = id.clone();
        let spawned = std::thread::Builder::new()
            .name("adopt".into())
            .spawn(move || {
                let Some(daemon) = daemon.upgrade() else {
                    return;
                };
                let tree = match daemon.catalog.tree_of(&snapshot) {
                    Ok((tree, _)) => tree,
                    Err(e) => {
                        tracing::error!(
                            mount,
                            "the snapshot this mount was made from was not stored ({e:#}); \
                             the mount works but would not survive a daemon crash"
                        );
                        return;
                    }
                };
                let mut mounts = daemon.mounts.lock();
                let Some(live) = mounts.get_mut(&mount) else {
                    return;
                };
                let result = daemon
                    .store
                    .set_ref(
                        &format!("{MOUNT_REF_PREFIX}{mount}"),
                        tree,
                        RefExpectation::Any,
                    )
                    .map_err(anyhow::Error::from)
                    .and_then(|_| {
                        live.info.tree = tree.to_hex();
                        daemon.write_record(&live.info)
                    });
                if let Err(e) = result {
                    tracing::error!(mount, "recording the mount's tree: {e:#}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(mount = id, "starting a thread: {e}");
        }
    }

    /// Writes a mount's record (`mount.json`) durably.
    fn write_record(&self, info: &MountInfo) -> anyhow::Result<()> {
        let dir = self.mount_dir(&info.id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let record = dir.join("mount.json");
        let tmp = dir.join("mount.json.tmp");
        let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(info)?)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &record).with_context(|| format!("renaming {}", tmp.display()))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    }

    fn start_mount(
        &self,
        info: &MountInfo,
        source: &MountSource,
        threads: Option<usize>,
    ) -> anyhow::Result<(Arc<CowFs>, Option<BackgroundSession>)> {
        self.write_record(info)?;
        let config = MountConfig {
            upper_dir: info.upper.clone(),
            quota_bytes: info.quota_bytes,
            inode_quota: info.inode_quota,
        };
        let fs = match source {
            MountSource::Tree(tree) => {
                self.store.set_ref(
                    &format!("{MOUNT_REF_PREFIX}{}", info.id),
                    *tree,
                    RefExpectation::Any,
                )?;
                CowFs::new(self.store.clone(), *tree, config)
            }
            MountSource::Capture(_, capture) => {
                CowFs::from_capture(self.store.clone(), capture, config)
            }
        };
        let fs =
            Arc::new(fs.with_context(|| {
                format!("preparing the upper layer in {}", info.upper.display())
            })?);
        let options = FuseOptions {
            threads: threads.unwrap_or(FuseOptions::default().threads),
            fs_name: format!("strata:{}", info.id),
            ..FuseOptions::default()
        };
        let session = match &info.mountpoint {
            Some(mountpoint) => {
                Some(mount(fs.clone(), mountpoint, &options).with_context(|| {
                    format!("mounting on {} (is FUSE available?)", mountpoint.display())
                })?)
            }
            None => None,
        };
        Ok((fs, session))
    }

    fn snapshot_create(&self, args: SnapshotCreate) -> anyhow::Result<SnapshotInfo> {
        for key in args.labels.keys() {
            if key.is_empty() || key.contains('=') {
                bail!("label keys must be non-empty and contain no '=' (got '{key}')");
            }
        }
        let dir = match &args.dir {
            Some(dir) => {
                let trimmed = dir.trim_matches('/');
                if trimmed.split('/').any(|p| p == ".." || p == ".") {
                    bail!("the directory to snapshot must be a plain path inside the mount, not '{dir}'");
                }
                Some(trimmed.to_string())
            }
            None => None,
        };
        let (fs, mount, parent, image) = {
            let mounts = self.mounts.lock();
            let id = Self::find_mount_or_not_found(&mounts, &args.mount)?;
            let live = &mounts[&id];
            let parent = match (&live.last_snapshot, &live.info.snapshot) {
                (Some(last), _) if dir.is_none() => last.clone(),
                (_, Some(origin)) => format!("snapshot:{origin}"),
                _ => format!("image:{}", live.info.image),
            };
            (live.fs.clone(), id, parent, live.info.image.clone())
        };
        let created = now_secs();
        let expires = match args.expire_secs {
            None => None,
            Some(secs) if secs > MAX_EXPIRE_SECS => {
                return Err(crate::exit::InvalidInput(format!(
                    "--expire may be at most {} days (got {secs} s); leave it out to keep \
                     the snapshot until it is removed",
                    MAX_EXPIRE_SECS / 86400
                ))
                .into())
            }
            Some(secs) => Some(created as u64 + secs),
        };
        let info = SnapshotInfo {
            id: self.new_id(),
            kind: if dir.is_some() {
                "directory"
            } else {
                "filesystem"
            }
            .into(),
            mount: mount.clone(),
            path: dir.clone(),
            parent,
            image,
            created,
            labels: args.labels,
            expires,
            state: SnapshotState::Converting,
            error: None,
            tree: None,
            changed_bytes: 0,
            changed_files: 0,
            new_bytes: 0,
            call_ms: 0.0,
            durable_ms: None,
            total_bytes: None,
        };
        let id = info.id.clone();
        let dir_bytes = dir.unwrap_or_default();
        // Snapshots of one mount are taken one at a time, in order.
        let guard = self.snapshot_lock.lock();
        let taken = self.catalog.take(info, fs, dir_bytes.as_bytes(), false)?;
        if taken.path.is_none() {
            if let Some(live) = self.mounts.lock().get_mut(&mount) {
                live.last_snapshot = Some(id.clone());
            }
        }
        drop(guard);
        if args.wait_durable {
            return self.catalog.wait(&id);
        }
        Ok(taken)
    }

    /// Places snapshot `snapshot`'s tree at `path` in live mount `key`
    /// (copy-on-write: the snapshot never changes).
    fn graft(&self, key: &str, snapshot: &str, path: &str) -> anyhow::Result<MountInfo> {
        let trimmed = path.trim_matches('/');
        if trimmed.is_empty()
            || trimmed
                .split('/')
                .any(|p| p == ".." || p == "." || p.is_empty())
        {
            bail!("the graft path must be a plain path inside the mount, not '{path}'");
        }
        let (tree, _) = self.catalog.tree_of(snapshot)?;
        let mounts = self.mounts.lock();
        let id = Self::find_mount_or_not_found(&mounts, key)?;
        let live = &mounts[&id];
        if !self.catalog.add_graft(&id, tree)? {
            return Err(crate::exit::InvalidInput(format!(
                "mount {id} already keeps as many trees alive as it may; \
                 take a filesystem snapshot of it first"
            ))
            .into());
        }
        let (parent, _) = live.fs.graft(trimmed.as_bytes(), tree).map_err(|e| {
            anyhow!(std::io::Error::from_raw_os_error(e.0))
                .context(format!("placing snapshot {snapshot} at /{trimmed}"))
        })?;
        if let Some(session) = &live.session {
            let name = trimmed.rsplit('/').next().unwrap_or(trimmed);
            layerfs::fuse::invalidate_entry(session, parent, name.as_bytes());
        }
        Ok(MountInfo {
            used_bytes: live.fs.used_bytes(),
            inodes_made: live.fs.inodes_made(),
            ..live.info.clone()
        })
    }

    /// Mounts `count` copies of a snapshot at `under/ID-N`; all or none.
    fn fork(&self, args: SnapshotFork) -> anyhow::Result<Vec<MountInfo>> {
        check_threads(args.threads)?;
        if !args.under.is_absolute() {
            bail!("the fork directory must be an absolute path");
        }
        if args.count == 0 || args.count > 10_000 {
            bail!("--count must be between 1 and 10000");
        }
        self.catalog.tree_of(&args.id)?;
        let mut made: Vec<MountInfo> = Vec::new();
        for n in 0..args.count {
            let mountpoint = args.under.join(format!("{}-{n}", args.id));
            let result = fs::create_dir_all(&mountpoint)
                .with_context(|| format!("creating {}", mountpoint.display()))
                .and_then(|()| {
                    self.mount_start(MountCreate {
                        image: String::new(),
                        snapshot: Some(args.id.clone()),
                        mountpoint: Some(mountpoint.clone()),
                        quota_bytes: args.quota_bytes,
                        inode_quota: args.inode_quota,
                        threads: args.threads,
                    })
                });
            match result {
                Ok(info) => made.push(info),
                Err(e) => {
                    for info in &made {
                        let _ = self.mount_remove(&info.id);
                    }
                    return Err(e).with_context(|| format!("fork {n} of {}", args.count));
                }
            }
        }
        // One sync makes every new mount's name durable.
        if let Err(e) = self.sync_mounts_dir() {
            for info in &made {
                let _ = self.mount_remove(&info.id);
            }
            return Err(e);
        }
        Ok(made)
    }

    fn mount_list(&self) -> Vec<MountInfo> {
        self.mounts
            .lock()
            .values()
            .map(|m| MountInfo {
                used_bytes: m.fs.used_bytes(),
                inodes_made: m.fs.inodes_made(),
                ..m.info.clone()
            })
            .collect()
    }

    fn find_mount(mounts: &BTreeMap<String, LiveMount>, key: &str) -> Option<String> {
        if mounts.contains_key(key) {
            return Some(key.to_string());
        }
        let path = Path::new(key);
        mounts
            .values()
            .find(|m| m.info.mountpoint.as_deref() == Some(path))
            .map(|m| m.info.id.clone())
    }

    /// [`Daemon::find_mount`], or a not-found error naming `key`.
    fn find_mount_or_not_found(
        mounts: &BTreeMap<String, LiveMount>,
        key: &str,
    ) -> anyhow::Result<String> {
        Self::find_mount(mounts, key).ok_or_else(|| {
            anyhow!(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no mount with id or mount point '{key}'"),
            ))
        })
    }

    /// A live mount's id and filesystem (for 9P attaches).
    fn find_fs(&self, key: &str) -> Option<(String, Arc<CowFs>)> {
        let mounts = self.mounts.lock();
        let id = Self::find_mount(&mounts, key)?;
        let fs = mounts[&id].fs.clone();
        Some((id, fs))
    }

    fn p9(&self) -> &serve9p::Service {
        self.p9.get().expect("set at start")
    }

    fn mount_remove(&self, key: &str) -> anyhow::Result<MountInfo> {
        let mut mount = {
            let mut mounts = self.mounts.lock();
            let id = Self::find_mount_or_not_found(&mounts, key)?;
            let mount = &mounts[&id];
            // A plain unmount: fails with EBUSY while something uses it,
            // rather than detaching a root filesystem a sandbox still runs on.
            if let Some(mountpoint) = &mount.info.mountpoint {
                if let Err(e) = umount(mountpoint, 0) {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e)
                            .with_context(|| format!("unmounting {}", mountpoint.display()));
                    }
                }
            }
            mounts.remove(&id).expect("found above")
        };
        if let Some(session) = mount.session.take() {
            let _ = session.join();
        }
        let info = MountInfo {
            used_bytes: mount.fs.used_bytes(),
            inodes_made: mount.fs.inodes_made(),
            ..mount.info.clone()
        };
        drop(mount);
        self.p9().forget_mount(&info.id);
        self.discard(&info.id);
        Ok(info)
    }

    /// Unmounts everything (lazily: shutting down must not hang on a busy
    /// mount) and discards the upper layers: a stopped daemon ends its
    /// sandboxes' mounts. (A daemon that dies instead keeps them: the next
    /// one restores them.)
    fn shutdown(&self) {
        self.p9().stop_all();
        let mounts = std::mem::take(&mut *self.mounts.lock());
        for (id, mut mount) in mounts {
            if let Some(mountpoint) = &mount.info.mountpoint {
                let _ = umount(mountpoint, libc::MNT_DETACH);
            }
            drop(mount.session.take());
            self.discard(&id);
        }
    }

    /// Answers one request. `conn` is only written to by a streamed export.
    fn handle(&self, op: Op, conn: &mut UnixStream) -> Response {
        let json = |v: anyhow::Result<serde_json::Value>| answer(v);
        match op {
            Op::Info => json(Ok(serde_json::to_value(self.info()).unwrap_or_default())),
            Op::ImageImport(args) => json((|| {
                if !args.source.is_absolute() {
                    bail!("the import source must be an absolute path");
                }
                let options = ImportOptions {
                    limits: args.limits.unwrap_or_default(),
                    tag: args.tag,
                    kind: args.kind,
                };
                let report = import_pool()
                    .install(|| {
                        layerfs::import_image(&self.store, &args.name, &args.source, &options)
                    })
                    .with_context(|| {
                        format!(
                            "importing {} as image '{}'",
                            args.source.display(),
                            args.name
                        )
                    })?;
                Ok(serde_json::to_value(report)?)
            })()),
            Op::ImageList => json((|| {
                Ok(serde_json::to_value(layerfs::list_images(&self.store)?)?)
            })()),
            Op::ImageShow { name } => json((|| {
                Ok(serde_json::to_value(layerfs::get_image(
                    &self.store,
                    &name,
                )?)?)
            })()),
            Op::ImageRemove { name } => json((|| {
                layerfs::remove_image(&self.store, &name)?;
                Ok(serde_json::json!({ "removed": name }))
            })()),
            Op::ImageExport {
                name,
                to: ExportTarget::File(path),
            } => json((|| {
                if !path.is_absolute() {
                    bail!("the export target must be an absolute path");
                }
                let tree = layerfs::image_tree(&self.store, &name)?;
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let mut writer = BufWriter::new(file);
                let stats = layerfs::export_tar(&self.store, tree, &mut writer)?;
                writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(serde_json::to_value(stats)?)
            })()),
            Op::ImageExport {
                name,
                to: ExportTarget::Stream,
            } => {
                let tree = match layerfs::image_tree(&self.store, &name) {
                    Ok(tree) => tree,
                    Err(e) => return answer(Err(e.into())),
                };
                let header = answer(Ok(serde_json::json!({ "stream": true })));
                if api::write_line(conn, &header).is_err() {
                    return answer(Err(anyhow!("the client went away")));
                }
                let frames = FrameWriter::new(&mut *conn);
                let mut writer = BufWriter::with_capacity(api::FRAME_MAX, frames);
                let result = layerfs::export_tar(&self.store, tree, &mut writer)
                    .map_err(anyhow::Error::from)
                    .and_then(|stats| {
                        writer.flush()?;
                        Ok(stats)
                    });
                let end = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|frames| frames.finish().map(|_| ()));
                json(result.and_then(|stats| {
                    end?;
                    Ok(serde_json::to_value(stats)?)
                }))
            }
            Op::MountCreate(args) => json(
                self.mount_create(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::MountList => json(serde_json::to_value(self.mount_list()).map_err(Into::into)),
            Op::MountRemove { mount } => json(
                self.mount_remove(&mount)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotCreate(args) => json(
                self.snapshot_create(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotList(filter) => json(
                self.catalog
                    .list(&filter)
                    .and_then(|list| Ok(serde_json::to_value(list)?)),
            ),
            Op::SnapshotShow { id } => json((|| {
                let mut info = self.catalog.get(&id)?;
                if let Some(tree) = &info.tree {
                    let tree: ChunkId = tree.parse().map_err(|e| anyhow!("bad tree id: {e}"))?;
                    info.total_bytes = Some(tree_bytes(&self.store, tree)?);
                }
                Ok(serde_json::to_value(info)?)
            })()),
            Op::SnapshotWait { id } => json(
                self.catalog
                    .wait(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotDiff { a, b } => json((|| {
                let (ta, _) = self.catalog.tree_of(&a)?;
                let (tb, _) = self.catalog.tree_of(&b)?;
                Ok(serde_json::to_value(layerfs::diff_trees(
                    &self.store,
                    ta,
                    tb,
                )?)?)
            })()),
            Op::SnapshotRemove { id } => json(
                self.catalog
                    .remove(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::StoreGc => json((|| Ok(serde_json::to_value(self.store.gc()?)?))()),
            Op::MountGraft {
                mount,
                snapshot,
                path,
            } => json(
                self.graft(&mount, &snapshot, &path)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotFork(args) => json(
                self.fork(args)
                    .and_then(|mounts| Ok(serde_json::to_value(mounts)?)),
            ),
            Op::Serve9pStart(args) => {
                let fd = if serve9p::Service::wants_fd(&args) {
                    let ask = answer(Ok(serde_json::json!({ "send_fd": true })));
                    if api::write_line(conn, &ask).is_err() {
                        return answer(Err(anyhow!("the client went away")));
                    }
                    match crate::fdpass::recv_fd(conn) {
                        Ok(fd) => Some(fd),
                        Err(e) => return answer(Err(anyhow!(e).context("receiving the socket"))),
                    }
                } else {
                    None
                };
                json(
                    self.p9()
                        .start(args, fd)
                        .and_then(|info| Ok(serde_json::to_value(info)?)),
                )
            }
            Op::Serve9pList => json(serde_json::to_value(self.p9().list()).map_err(Into::into)),
            Op::Serve9pStop { listen } => json(
                self.p9()
                    .stop(&listen)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
        }
    }

    /// Serves one connection until the client closes it.
    fn serve(&self, stream: UnixStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut conn = stream;
        loop {
            let line = match api::read_line_bytes(&mut reader) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // Too long (the rest of it is not read) or cut off:
                    // say why, then close.
                    let _ = api::write_line(&mut conn, &invalid(format!("bad request line: {e}")));
                    break;
                }
                Err(e) => return Err(e),
            };
            let response = match api::parse_request(&line) {
                Ok(request) => self.handle(request.op, &mut conn),
                Err(message) => invalid(message),
            };
            api::write_line(&mut conn, &response)?;
        }
        Ok(())
    }
}

/// Imports read archives and directories the daemon does not control
/// (hostile ones too): they run on two threads of their own at the lowest
/// priority (nice 19), so the threads serving mounts come first; a third
/// import waits its turn.
fn import_pool() -> &'static rayon::ThreadPool {
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
fn raise_open_file_limit() {
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

/// Every FUSE session allocates a zeroed 16 MiB request buffer. glibc
/// raises its mmap threshold after large blocks are freed, after which such
/// buffers come from the heap and are zeroed page by page (a mount then
/// costs milliseconds of memset and 16 MiB of memory). A fixed threshold
/// keeps them fresh anonymous mappings: zero pages, touched only as far
/// as requests fill them.
fn keep_large_buffers_lazy() {
    // SAFETY: mallopt only changes allocator tuning; called before the
    // daemon's threads start allocating large blocks.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
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
}

/// The default chunk cache: 1/16 of physical memory, within 128 MiB..2 GiB.
fn default_chunk_cache() -> u64 {
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
    keep_large_buffers_lazy();
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
    match fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
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
    });
    let _ = daemon.me.set(Arc::downgrade(&daemon));
    {
        let me = Arc::downgrade(&daemon);
        let find: serve9p::FindMount = Arc::new(move |key| me.upgrade()?.find_fs(key));
        let poll = p9server::PollLimits {
            max_wait: std::time::Duration::from_micros(args.p9_poll_us),
            max_pollers: std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1)),
        };
        let _ = daemon.p9.set(serve9p::Service::new(find, poll));
    }
    crate::home::make_durable_dir(&home.join("mounts"))?;
    daemon
        .recover()
        .context("cleaning up after the previous daemon")?;

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    {
        let daemon = daemon.clone();
        let socket = socket.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    tracing::info!(signal, "shutting down");
                    let _ = fs::remove_file(&socket);
                    daemon.shutdown();
                    std::process::exit(0);
                }
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
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                continue;
            }
        };
        // A connection the daemon cannot serve is turned away with one
        // error line; the daemon and its mounts go on.
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_API_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            turn_away(
                &mut conn,
                &format!(
                    "the daemon already serves {MAX_API_CONNECTIONS} API connections; try again"
                ),
            );
            continue;
        }
        let (daemon, count) = (daemon.clone(), open.clone());
        let refusal = conn.try_clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = daemon.serve(conn) {
                    tracing::debug!("connection ended: {e}");
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("no thread for an API connection: {e}");
            if let Ok(mut conn) = refusal {
                turn_away(
                    &mut conn,
                    &format!("the daemon cannot serve this connection now: {e}"),
                );
            }
        }
    }
    Ok(exit::code(exit::OK))
}

/// Most API connections served at once (each has a thread); more are
/// answered with an error and closed.
pub const MAX_API_CONNECTIONS: usize = 128;

/// Most FUSE request threads a mount may have.
pub const MAX_MOUNT_THREADS: usize = 64;

/// A mount's FUSE thread count, if given, is 1..=[`MAX_MOUNT_THREADS`].
fn check_threads(threads: Option<usize>) -> anyhow::Result<()> {
    match threads {
        Some(n) if n == 0 || n > MAX_MOUNT_THREADS => Err(crate::exit::InvalidInput(format!(
            "a mount has 1 to {MAX_MOUNT_THREADS} FUSE threads, not {n}"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Answers a connection the daemon will not serve with one error line.
fn turn_away(conn: &mut UnixStream, message: &str) {
    let response = Response {
        api: API_VERSION,
        ok: false,
        result: None,
        error: Some(RemoteError {
            kind: exit::kind_name(exit::FAILURE).into(),
            code: exit::FAILURE,
            message: message.to_string(),
        }),
    };
    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = api::write_line(conn, &response);
}
