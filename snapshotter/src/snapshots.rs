//! The snapshot catalog and the background conversion of snapshots.
//!
//! A snapshot is taken in two steps. The call captures the mount (see
//! `layerfs::cowfs::Capture`: a metadata operation that seals changed
//! files, whatever their size) and returns; a worker thread then stores the
//! captured tree, and the snapshot becomes *durable*: a record node
//! (`SNAPSHOT_RECORD`, linking the tree) named by the ref `snapshot/ID`.
//!
//! While converting, a snapshot is listed from memory and from
//! `HOME/snapshots/pending/ID.json`, written (and synced) before the
//! capture. A daemon that starts and finds such a file reports that
//! snapshot failed (`HOME/snapshots/failed/ID.json`): a snapshot is never
//! half-made — it is durable with its whole tree, or failed with none.
//!
//! Conversions run one at a time, in the order snapshots were taken, so a
//! mount's layers are stored oldest first. Each holds a store lease (its
//! writer) until its ref exists, so GC never collects a snapshot being
//! written. A live mount's further roots — the tree of its newest stored
//! filesystem snapshot, the trees of the directory snapshots stored since
//! (its files read from these trees' blobs once their layers are
//! converted) and the trees grafted into it — are kept alive by the ref
//! `mountroots/ID`, a `MOUNT_ROOTS` node linking them, so that they stay
//! even if the snapshots are removed. Each is recorded before the mount
//! switches to its blobs.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use cas::{ChunkId, Node, NodeType, RefExpectation, Store};
use layerfs::cowfs::{Capture, CowFs, Stored};
use layerfs::tree::{Entry, InodeKind};
use layerfs::TreeReader;
use parking_lot::{Condvar, Mutex};

use crate::api::{SnapshotFilter, SnapshotInfo, SnapshotState};

/// Node type of a snapshot record (body: the snapshot's JSON; link 0: its
/// tree).
pub const SNAPSHOT_RECORD: NodeType = NodeType(5);
/// Ref prefix of durable snapshots.
pub const SNAPSHOT_REF_PREFIX: &str = "snapshot/";
/// Node type listing a live mount's further roots (body: JSON
/// [`MountRoots`]; links: the same trees).
pub const MOUNT_ROOTS: NodeType = NodeType(6);
/// Ref prefix of live mounts' further roots.
pub const MOUNT_ROOTS_REF_PREFIX: &str = "mountroots/";

/// Trees a live mount reads besides the one it was made from.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MountRoots {
    /// The tree of its newest stored filesystem snapshot.
    pub base: Option<ChunkId>,
    /// Trees grafted into it.
    pub grafts: Vec<ChunkId>,
    /// Trees of the directory snapshots stored since `base`: their blobs
    /// replaced the sealed layers of the files under those directories.
    /// A filesystem snapshot's tree reaches every blob the mount read when
    /// it was captured (and conversions run in capture order), so storing
    /// one clears this list.
    #[serde(default)]
    pub dirs: Vec<ChunkId>,
}

impl MountRoots {
    /// Every tree these roots keep alive.
    fn links(&self) -> Vec<ChunkId> {
        self.base
            .iter()
            .chain(self.grafts.iter())
            .chain(self.dirs.iter())
            .copied()
            .collect()
    }
}

/// Most trees one mount's roots may list; past it, a directory snapshot's
/// blobs are not switched into the mount (its layers stay local until the
/// mount's next filesystem snapshot).
const MAX_MOUNT_ROOTS: usize = cas::MAX_NODE_LINKS / 2;

/// A captured snapshot waiting to be stored.
struct Job {
    info: SnapshotInfo,
    fs: Arc<CowFs>,
    capture: Arc<Capture>,
    taken: Instant,
}

/// The catalog: durable snapshots in the store, converting and failed ones
/// here.
pub struct Catalog {
    dir: PathBuf,
    store: Store,
    /// Converting and failed snapshots.
    inflight: Mutex<BTreeMap<String, SnapshotInfo>>,
    settled: Condvar,
    queue: Mutex<mpsc::Sender<Job>>,
    /// Further roots of live mounts (mirrors the `mountroots/` refs).
    roots: Mutex<BTreeMap<String, MountRoots>>,
    /// Captures of snapshots being stored (restores mount them at once).
    captures: Mutex<BTreeMap<String, Arc<Capture>>>,
}

fn write_synced(path: &Path, info: &SnapshotInfo) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec_pretty(info)?)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

fn read_info(path: &Path) -> Option<SnapshotInfo> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Seconds since the Unix epoch, with fraction.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Catalog {
    /// Opens the catalog of data directory `home`: snapshots a dead daemon
    /// left converting are reported failed. Starts the conversion worker.
    pub fn open(home: &Path, store: Store) -> anyhow::Result<Arc<Catalog>> {
        let dir = home.join("snapshots");
        for sub in ["pending", "failed"] {
            crate::home::make_durable_dir(&dir.join(sub))?;
        }
        let mut inflight = BTreeMap::new();
        for entry in fs::read_dir(dir.join("pending"))? {
            let path = entry?.path();
            if let Some(mut info) = read_info(&path) {
                let durable = store
                    .get_ref(&format!("{SNAPSHOT_REF_PREFIX}{}", info.id))?
                    .is_some();
                if !durable {
                    info.state = SnapshotState::Failed;
                    info.error = Some(
                        "the node daemon stopped before the snapshot was stored; \
                         it holds nothing (remove it with `snapctl snapshot rm`)"
                            .into(),
                    );
                    write_synced(&dir.join("failed").join(format!("{}.json", info.id)), &info)?;
                    tracing::warn!(snapshot = info.id, "snapshot left unfinished: failed");
                }
            }
            let _ = fs::remove_file(&path);
        }
        for entry in fs::read_dir(dir.join("failed"))? {
            let path = entry?.path();
            if let Some(info) = read_info(&path) {
                inflight.insert(info.id.clone(), info);
            }
        }
        let (send, receive) = mpsc::channel::<Job>();
        let catalog = Arc::new(Catalog {
            dir,
            store,
            inflight: Mutex::new(inflight),
            settled: Condvar::new(),
            queue: Mutex::new(send),
            roots: Mutex::new(BTreeMap::new()),
            captures: Mutex::new(BTreeMap::new()),
        });
        let worker = catalog.clone();
        // For tests of a daemon killed mid-conversion: hold each
        // conversion back this long.
        let delay = std::env::var("STRATA_CONVERSION_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || {
                for job in receive {
                    if let Some(delay) = delay {
                        std::thread::sleep(delay);
                    }
                    worker.convert(job);
                }
            })
            .context("starting the snapshot worker")?;
        Ok(catalog)
    }

    fn pending_path(&self, id: &str) -> PathBuf {
        self.dir.join("pending").join(format!("{id}.json"))
    }

    fn failed_path(&self, id: &str) -> PathBuf {
        self.dir.join("failed").join(format!("{id}.json"))
    }

    /// Takes a snapshot of `fs`: `info` describes it (id, mount, parent,
    /// labels, ...). Returns once captured (or, with `wait`, once durable).
    pub fn take(
        &self,
        mut info: SnapshotInfo,
        fs: Arc<CowFs>,
        dir: &[u8],
        wait: bool,
    ) -> anyhow::Result<SnapshotInfo> {
        info.state = SnapshotState::Converting;
        let pending = self.pending_path(&info.id);
        let taken = Instant::now();
        // The pending record is made durable while the mount is captured
        // (both before the call returns; the sync overlaps the capture).
        let record = {
            let (pending, info) = (pending.clone(), info.clone());
            std::thread::spawn(move || write_synced(&pending, &info))
        };
        let captured = fs.capture(dir);
        let recorded = record
            .join()
            .map_err(|_| anyhow!("writing the pending snapshot record panicked"))
            .and_then(|r| r);
        if let Err(e) = recorded {
            // Not recorded: nothing may claim the snapshot exists. What
            // was sealed stays valid in the mount (its next snapshot
            // stores it).
            let _ = fs::remove_file(&pending);
            return Err(e.context("recording the snapshot"));
        }
        let capture = match captured {
            Ok(capture) => capture,
            Err(e) => {
                let _ = fs::remove_file(&pending);
                let err = std::io::Error::from_raw_os_error(e.0);
                return Err(anyhow!(err)).with_context(|| {
                    format!(
                        "capturing '{}' of mount {}",
                        String::from_utf8_lossy(dir),
                        info.mount
                    )
                });
            }
        };
        info.call_ms = taken.elapsed().as_secs_f64() * 1e3;
        info.changed_bytes = capture.sealed_bytes();
        info.changed_files = capture.sealed_files() as u64;
        let capture = Arc::new(capture);
        self.captures
            .lock()
            .insert(info.id.clone(), capture.clone());
        self.inflight.lock().insert(info.id.clone(), info.clone());
        let id = info.id.clone();
        self.queue
            .lock()
            .send(Job {
                info: info.clone(),
                fs,
                capture,
                taken,
            })
            .map_err(|_| anyhow!("the snapshot worker has stopped"))?;
        if wait {
            return self.wait(&id);
        }
        Ok(info)
    }

    /// Stores one captured snapshot; marks it durable or failed. Once
    /// durable, the mount's sealed layers become the stored blobs.
    fn convert(&self, job: Job) {
        let id = job.info.id.clone();
        let result = self.store_job(&job);
        if let Ok(stored) = &result {
            // Before anyone is told the snapshot is durable: the mount's
            // journal is synced with it, so after a power cut the mount
            // never comes back older than a snapshot taken of it.
            if let Err(e) = job.fs.converted(stored) {
                // The layers stay local (still correct); the mount's next
                // snapshot stores them again.
                tracing::warn!(
                    snapshot = id,
                    "recording the stored layers in mount {}'s journal failed (errno {})",
                    job.info.mount,
                    e.0
                );
            }
        }
        self.captures.lock().remove(&id);
        let mut inflight = self.inflight.lock();
        match result {
            Ok(_) => {
                inflight.remove(&id);
                let _ = fs::remove_file(self.pending_path(&id));
                self.settled.notify_all();
                return;
            }
            Err(e) => {
                tracing::error!(snapshot = id, "storing the snapshot failed: {e:#}");
                let mut info = job.info;
                info.state = SnapshotState::Failed;
                info.error = Some(format!("{e:#}"));
                if let Err(e) = write_synced(&self.failed_path(&id), &info) {
                    tracing::error!(snapshot = id, "recording the failure: {e:#}");
                }
                inflight.insert(id.clone(), info);
            }
        }
        let _ = fs::remove_file(self.pending_path(&id));
        self.settled.notify_all();
    }

    fn store_job(&self, job: &Job) -> anyhow::Result<Stored> {
        let writer = self.store.writer(&format!("snapshot {}", job.info.id));
        let stored = job
            .capture
            .store(&self.store, &writer)
            .context("storing the captured tree")?;
        let mut info = job.info.clone();
        info.state = SnapshotState::Durable;
        info.tree = Some(stored.tree.to_hex());
        info.new_bytes = stored.new_bytes;
        info.durable_ms = Some(job.taken.elapsed().as_secs_f64() * 1e3);
        let record = writer.put_node(&Node::new(
            SNAPSHOT_RECORD,
            vec![stored.tree],
            serde_json::to_vec(&info)?,
        ))?;
        writer.commit()?;
        writer.set_ref(
            &format!("{SNAPSHOT_REF_PREFIX}{}", info.id),
            record.id,
            RefExpectation::Absent,
        )?;
        let in_roots = match info.path {
            None => self.update_roots(&info.mount, |r| {
                r.base = Some(stored.tree);
                r.dirs.clear();
                true
            })?,
            // The mount's files under the directory will read this tree's
            // blobs: it must stay alive with the mount, whatever becomes
            // of the snapshot.
            Some(_) => self.update_roots(&info.mount, |r| {
                if r.dirs.contains(&stored.tree) {
                    return true;
                }
                if r.links().len() >= MAX_MOUNT_ROOTS {
                    return false;
                }
                r.dirs.push(stored.tree);
                true
            })?,
        };
        if !in_roots {
            tracing::warn!(
                snapshot = info.id,
                mount = info.mount,
                "the mount already keeps {MAX_MOUNT_ROOTS} trees alive; its sealed layers \
                 stay local until its next filesystem snapshot"
            );
            return Ok(stored.keep_layers());
        }
        Ok(stored)
    }

    /// Changes mount `mount`'s further roots and makes the change durable.
    /// `change` returns whether to keep its change; its answer is
    /// returned.
    fn update_roots(
        &self,
        mount: &str,
        change: impl FnOnce(&mut MountRoots) -> bool,
    ) -> anyhow::Result<bool> {
        let mut all = self.roots.lock();
        let roots = match all.get(mount) {
            Some(r) => r.clone(),
            None => self.load_roots(mount)?,
        };
        let mut new = roots;
        if !change(&mut new) {
            return Ok(false);
        }
        let links = new.links();
        let writer = self.store.writer(&format!("roots of mount {mount}"));
        let node = writer.put_node(&Node::new(MOUNT_ROOTS, links, serde_json::to_vec(&new)?))?;
        writer.commit()?;
        writer.set_ref(
            &format!("{MOUNT_ROOTS_REF_PREFIX}{mount}"),
            node.id,
            RefExpectation::Any,
        )?;
        all.insert(mount.to_string(), new);
        Ok(true)
    }

    /// Records a tree grafted into `mount`; `false` if the mount already
    /// keeps as many trees alive as it may.
    pub fn add_graft(&self, mount: &str, tree: ChunkId) -> anyhow::Result<bool> {
        self.update_roots(mount, |r| {
            if r.links().len() >= MAX_MOUNT_ROOTS {
                return false;
            }
            r.grafts.push(tree);
            true
        })
    }

    /// A mount's further roots as its ref records them.
    pub fn load_roots(&self, mount: &str) -> anyhow::Result<MountRoots> {
        let Some(value) = self
            .store
            .get_ref(&format!("{MOUNT_ROOTS_REF_PREFIX}{mount}"))?
        else {
            return Ok(MountRoots::default());
        };
        let node = self.store.get_node(&value.root)?;
        if node.node_type != MOUNT_ROOTS {
            bail!("ref mountroots/{mount} names a node of the wrong type");
        }
        Ok(serde_json::from_slice(&node.body)?)
    }

    /// Drops an ended mount's further roots.
    pub fn forget_mount(&self, mount: &str) {
        self.roots.lock().remove(mount);
        let name = format!("{MOUNT_ROOTS_REF_PREFIX}{mount}");
        if !matches!(self.store.get_ref(&name), Ok(Some(_))) {
            return;
        }
        if let Err(e) = self.store.delete_ref(&name, RefExpectation::Any) {
            tracing::warn!(mount, "removing the mount's roots: {e}");
        }
    }

    fn durable(&self, id: &str) -> anyhow::Result<Option<SnapshotInfo>> {
        let Some(value) = self.store.get_ref(&format!("{SNAPSHOT_REF_PREFIX}{id}"))? else {
            return Ok(None);
        };
        let node = self.store.get_node(&value.root)?;
        if node.node_type != SNAPSHOT_RECORD {
            bail!("ref snapshot/{id} names a node that is not a snapshot record");
        }
        let info: SnapshotInfo = serde_json::from_slice(&node.body)
            .with_context(|| format!("decoding the record of snapshot {id}"))?;
        Ok(Some(info))
    }

    /// One snapshot.
    pub fn get(&self, id: &str) -> anyhow::Result<SnapshotInfo> {
        if let Some(info) = self.inflight.lock().get(id) {
            return Ok(info.clone());
        }
        self.durable(id)?.ok_or_else(|| {
            anyhow!(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no snapshot '{id}' (see `snapctl snapshot list`)"),
            ))
        })
    }

    /// Waits until snapshot `id` is durable or failed.
    pub fn wait(&self, id: &str) -> anyhow::Result<SnapshotInfo> {
        let mut inflight = self.inflight.lock();
        while inflight
            .get(id)
            .is_some_and(|i| i.state == SnapshotState::Converting)
        {
            self.settled.wait(&mut inflight);
        }
        drop(inflight);
        self.get(id)
    }

    /// The capture of snapshot `id` while it is being stored.
    pub fn capture_of(&self, id: &str) -> Option<Arc<Capture>> {
        self.captures.lock().get(id).cloned()
    }

    /// Waits until no snapshot of `mount` is being stored.
    pub fn wait_for_mount(&self, mount: &str) {
        let mut inflight = self.inflight.lock();
        while inflight
            .values()
            .any(|i| i.mount == mount && i.state == SnapshotState::Converting)
        {
            self.settled.wait(&mut inflight);
        }
    }

    /// Records a memory snapshot whose root (`memsnap`'s image record or
    /// checkpoint directory) `writer` stored: its record and ref are
    /// written and synced with everything the writer holds, in one commit.
    pub fn put_memory(
        &self,
        info: SnapshotInfo,
        root: ChunkId,
        writer: &cas::Writer,
    ) -> anyhow::Result<SnapshotInfo> {
        let record = writer.put_node(&Node::new(
            SNAPSHOT_RECORD,
            vec![root],
            serde_json::to_vec(&info)?,
        ))?;
        writer.set_refs(&[(
            &format!("{SNAPSHOT_REF_PREFIX}{}", info.id),
            Some(record.id),
            RefExpectation::Absent,
        )])?;
        Ok(info)
    }

    /// The root of memory snapshot `id` (an image record or a checkpoint
    /// directory) and its record.
    pub fn memory_root(&self, id: &str) -> anyhow::Result<(ChunkId, SnapshotInfo)> {
        let info = self.get(id)?;
        let Some(memory) = &info.memory else {
            return Err(crate::exit::InvalidInput(format!(
                "snapshot {id} is a {} snapshot, not a memory snapshot",
                info.kind
            ))
            .into());
        };
        let root = memory
            .root
            .parse()
            .map_err(|e| anyhow!("snapshot {id} names a bad memory root: {e}"))?;
        Ok((root, info))
    }

    /// The tree of durable snapshot `id` (waiting for it if converting).
    pub fn tree_of(&self, id: &str) -> anyhow::Result<(ChunkId, SnapshotInfo)> {
        let info = self.wait(id)?;
        if info.memory.is_some() {
            return Err(crate::exit::InvalidInput(format!(
                "snapshot {id} is a memory snapshot: it holds no file tree \
                 (write it back with `snapctl mem get`, or mount its files with \
                 `snapctl mount --snapshot` or `snapctl fork`)"
            ))
            .into());
        }
        match (&info.state, &info.tree) {
            (SnapshotState::Durable, Some(tree)) => Ok((
                tree.parse()
                    .map_err(|e| anyhow!("snapshot {id} names a bad tree: {e}"))?,
                info,
            )),
            _ => bail!(
                "snapshot {id} failed and holds nothing: {}",
                info.error.unwrap_or_default()
            ),
        }
    }

    /// Every snapshot matching `filter`, oldest first.
    pub fn list(&self, filter: &SnapshotFilter) -> anyhow::Result<Vec<SnapshotInfo>> {
        let mut all: Vec<SnapshotInfo> = self.inflight.lock().values().cloned().collect();
        for (name, _) in self.store.list_refs(SNAPSHOT_REF_PREFIX)? {
            if let Some(id) = name.strip_prefix(SNAPSHOT_REF_PREFIX) {
                if let Some(info) = self.durable(id)? {
                    all.push(info);
                }
            }
        }
        all.retain(|s| {
            filter
                .labels
                .iter()
                .all(|(k, v)| s.labels.get(k) == Some(v))
                && filter.parent.as_ref().is_none_or(|p| &s.parent == p)
                && filter.mount.as_ref().is_none_or(|m| &s.mount == m)
        });
        all.sort_by(|a, b| a.created.total_cmp(&b.created));
        Ok(all)
    }

    /// The newest durable or converting filesystem snapshot of `mount`.
    pub fn latest_of_mount(&self, mount: &str) -> Option<String> {
        let filter = SnapshotFilter {
            mount: Some(mount.to_string()),
            ..SnapshotFilter::default()
        };
        self.list(&filter)
            .ok()?
            .into_iter()
            .rfind(|s| s.path.is_none() && s.state != SnapshotState::Failed)
            .map(|s| s.id)
    }

    /// Removes a snapshot; its unique data becomes collectable.
    pub fn remove(&self, id: &str) -> anyhow::Result<SnapshotInfo> {
        let mut inflight = self.inflight.lock();
        if let Some(info) = inflight.get(id) {
            if info.state == SnapshotState::Converting {
                bail!("snapshot {id} is still being stored; wait for it (`snapctl snapshot show --wait`) and try again");
            }
            let info = inflight.remove(id).expect("present");
            let _ = fs::remove_file(self.failed_path(id));
            return Ok(info);
        }
        drop(inflight);
        let info = self.get(id)?;
        self.store
            .delete_ref(&format!("{SNAPSHOT_REF_PREFIX}{id}"), RefExpectation::Any)?;
        Ok(info)
    }

    /// Removes durable snapshots whose expiry time has passed.
    pub fn expire(&self) {
        let now = now_secs() as u64;
        let Ok(all) = self.list(&SnapshotFilter::default()) else {
            return;
        };
        for info in all {
            if info.state == SnapshotState::Durable && info.expires.is_some_and(|t| t <= now) {
                match self.remove(&info.id) {
                    Ok(_) => tracing::info!(snapshot = info.id, "expired; removed"),
                    Err(e) => tracing::warn!(snapshot = info.id, "expiring: {e:#}"),
                }
            }
        }
    }
}

/// Total bytes of the files of tree `root` (hard links counted once).
pub fn tree_bytes(store: &Store, root: ChunkId) -> anyhow::Result<u64> {
    let reader = TreeReader::new(store);
    let mut total = 0u64;
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        let dir = reader.dir(id)?;
        for (_, entry) in reader.entries(&dir)? {
            match entry {
                Entry::Dir(child) => stack.push(child),
                Entry::Inode(inode) => {
                    if let InodeKind::File { size, .. } = inode.kind {
                        total += size;
                    }
                }
                Entry::HardLink { .. } => {}
            }
        }
    }
    Ok(total)
}
