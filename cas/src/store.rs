//! The store: opening and creating it, writing chunks with group commit,
//! and reading them back verified.
//!
//! Write order is the durability contract: a chunk's frame is appended to a
//! pack (visible to readers of this process at once), then a commit makes
//! all appended frames durable with one `fdatasync` per touched pack, then
//! records their locations in the index with one synced RocksDB write, and
//! only then may a ref point at them. Concurrent committers share one
//! commit (group commit), so durability costs one fsync per batch, not per
//! chunk.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::blob::{BlobNodeCache, BlobWriter};
use crate::chunker::Chunking;
use crate::config::{OpenOptions, StoreConfig, MAX_CHUNK_LEN, MAX_FRAMES_PER_PACK};
use crate::error::{Error, Result};
use crate::frame;
use crate::id::{ChunkId, ChunkKind};
use crate::index::{ChunkLocation, IndexDb, OpenMode, RefValue};
use crate::lease::{LeaseInfo, LeaseSet, Leases};
use crate::node::{self, Node, VerifiedNode};
use crate::pack::{self, ActivePack, PackId};
use crate::refs::{validate_ref_name, RefExpectation};
use crate::source::ChunkSource;

/// Name of the marker file that makes a directory a store.
pub const MARKER_FILE: &str = "strata-store.json";
/// Store format version written by this build.
pub const STORE_VERSION: u32 = 1;
const PACKS_DIR: &str = "packs";
const INDEX_DIR: &str = "index";

/// The marker file's contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    format: String,
    version: u32,
    created_unix: u64,
    config: StoreConfig,
}

/// A handle to an open store. Cheap to clone; all clones share one store.
/// Safe to use from many threads at once.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) home: PathBuf,
    pub(crate) packs_dir: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) options: OpenOptions,
    pub(crate) index: IndexDb,
    appender: Mutex<Appender>,
    pending: Mutex<Pending>,
    commit_lock: Mutex<()>,
    durable_seq: AtomicU64,
    /// Group commits performed since the store was opened.
    commits: AtomicU64,
    write_failure: Mutex<Option<String>>,
    pub(crate) chunk_cache: quick_cache::sync::Cache<ChunkId, Bytes, ByteWeight>,
    pub(crate) blob_nodes: BlobNodeCache,
    open_packs: quick_cache::sync::Cache<PackId, Arc<File>>,
    /// Packs opened with `O_DIRECT`, for read-ahead (see `readahead.rs`).
    pub(crate) direct_packs: crate::readahead::DirectPacks,
    pub(crate) leases: Leases,
    refs_lock: Mutex<()>,
    pub(crate) gc_lock: Mutex<()>,
    /// Where chunks missing here are fetched from (the remote tier).
    source: parking_lot::RwLock<Option<Arc<dyn ChunkSource>>>,
}

#[derive(Clone)]
pub(crate) struct ByteWeight;

impl quick_cache::Weighter<ChunkId, Bytes> for ByteWeight {
    fn weight(&self, _: &ChunkId, value: &Bytes) -> u64 {
        value.len() as u64 + 64
    }
}

/// The write side of the packs: the active pack and what awaits a commit.
struct Appender {
    active: Option<ActivePack>,
    next_pack: PackId,
    /// Appends so far; a chunk's sequence number orders it for commits.
    seq: u64,
    /// Sealed packs whose bytes are not yet synced.
    unsynced: Vec<Arc<File>>,
    /// Whether the active pack has bytes not yet synced.
    active_dirty: bool,
    /// Highest pack sealed since the last commit.
    sealed_since_commit: Option<PackId>,
    /// Offset in the active pack up to which write-back has been started.
    writeback_from: u64,
    /// Offset in the active pack up to which pages were released.
    released_upto: u64,
}

/// Bytes appended before their write-back to disk is started, so a commit
/// finds most of them already written instead of flushing everything at
/// once (RocksDB's `bytes_per_sync`, for packs). The window before that is
/// then dropped from the page cache (see [`pack::release_written`]).
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Page-cache work on a pack, done outside the appender lock because it may
/// wait for the device.
struct Writeback {
    file: Arc<File>,
    /// Range whose write-back to start (length 0: to the end).
    start: Option<(u64, u64)>,
    /// Range to wait for and drop (length 0: to the end).
    release: Option<(u64, u64)>,
}

impl Writeback {
    /// Does the work; an error is a failed write-back of pack bytes, which
    /// no later `fdatasync` would report again.
    fn run(self) -> std::io::Result<()> {
        if let Some((offset, len)) = self.start {
            pack::start_writeback(&self.file, offset, len)?;
        }
        if let Some((offset, len)) = self.release {
            pack::release_written(&self.file, offset, len)?;
        }
        Ok(())
    }
}

/// Chunks appended to a pack but not yet in the index.
#[derive(Default)]
struct Pending {
    by_id: HashMap<ChunkId, (ChunkLocation, u64)>,
    queue: Vec<(ChunkId, ChunkLocation)>,
}

/// What a `put` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: ChunkId,
    /// False when the content was already stored (nothing was written).
    pub written: bool,
    /// Bytes this put appended to a pack (the whole frame, header
    /// included); 0 when nothing was written.
    pub stored_bytes: u64,
    /// Sequence number to commit through for this chunk to be durable.
    pub(crate) seq: u64,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Creates a new, empty store at `home`, which must not exist or be an
    /// empty directory.
    pub fn init(home: &Path, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        match std::fs::read_dir(home) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    let reason = if home.join(MARKER_FILE).exists() {
                        "a store already exists there"
                    } else {
                        "the directory is not empty"
                    };
                    return Err(Error::AlreadyExists {
                        path: home.to_path_buf(),
                        reason: reason.into(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(home)
                    .map_err(|e| Error::io(format!("creating {}", home.display()), e))?;
            }
            Err(e) => return Err(Error::io(format!("reading {}", home.display()), e)),
        }
        let packs_dir = home.join(PACKS_DIR);
        std::fs::create_dir(&packs_dir)
            .map_err(|e| Error::io(format!("creating {}", packs_dir.display()), e))?;
        drop(IndexDb::open(
            &home.join(INDEX_DIR),
            OpenMode::Create,
            8 << 20,
        )?);
        let marker = Marker {
            format: "strata-cas".into(),
            version: STORE_VERSION,
            created_unix: now_nanos() / 1_000_000_000,
            config,
        };
        let text = serde_json::to_vec_pretty(&marker)
            .map_err(|e| Error::Invariant(format!("encoding the marker: {e}")))?;
        write_durably(&home.join(MARKER_FILE), &text)?;
        pack::sync_dir(&packs_dir)?;
        pack::sync_dir(home)?;
        // The store's own name, which may have just been made.
        if let Some(parent) = home.parent().filter(|p| !p.as_os_str().is_empty()) {
            pack::sync_dir(parent)?;
        }
        Store::open(home, OpenOptions::default())
    }

    /// Opens the store at `home`, recovering from any crash: torn pack
    /// tails are cut off and frames that reached a pack but not the index
    /// are indexed.
    pub fn open(home: &Path, options: OpenOptions) -> Result<Store> {
        let marker = read_marker(home)?;
        let packs_dir = home.join(PACKS_DIR);
        let index = IndexDb::open(
            &home.join(INDEX_DIR),
            OpenMode::Existing,
            options.index_cache_bytes,
        )?;
        let (active, next_pack) = crate::recovery::recover_packs(&packs_dir, &index)?;
        let inner = Inner {
            home: home.to_path_buf(),
            packs_dir,
            config: marker.config,
            chunk_cache: quick_cache::sync::Cache::with_weighter(
                (options.chunk_cache_bytes / 65536).max(16) as usize,
                options.chunk_cache_bytes,
                ByteWeight,
            ),
            blob_nodes: BlobNodeCache::new(),
            open_packs: quick_cache::sync::Cache::new(options.max_open_packs.max(4)),
            direct_packs: crate::readahead::DirectPacks::new(options.max_open_packs.max(4)),
            options,
            index,
            appender: Mutex::new(Appender {
                active,
                next_pack,
                seq: 0,
                unsynced: Vec::new(),
                active_dirty: false,
                sealed_since_commit: None,
                writeback_from: 0,
                released_upto: 0,
            }),
            pending: Mutex::new(Pending::default()),
            commit_lock: Mutex::new(()),
            durable_seq: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            write_failure: Mutex::new(None),
            leases: Leases::default(),
            refs_lock: Mutex::new(()),
            gc_lock: Mutex::new(()),
            source: parking_lot::RwLock::new(None),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// The configuration fixed at `init`.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Starts a write operation. Everything the writer puts or pins stays
    /// alive (GC will not remove it) until the writer is dropped; `purpose`
    /// names the operation in reports.
    pub fn writer(&self, purpose: &str) -> Writer {
        let (lease_id, lease) = self.inner.leases.acquire(purpose);
        Writer {
            store: self.clone(),
            lease_id,
            lease,
            needs_seq: AtomicU64::new(0),
            known: Mutex::new(HashSet::default()),
        }
    }

    /// The bytes of chunk `id`, verified against its id.
    pub fn get(&self, id: &ChunkId) -> Result<Bytes> {
        self.inner.read_chunk(id).map(|(_, bytes)| bytes)
    }

    /// The bytes of chunk `id` with its kind.
    pub fn get_with_kind(&self, id: &ChunkId) -> Result<(ChunkKind, Bytes)> {
        self.inner.read_chunk(id)
    }

    /// Decodes node `id`, with its id (see [`Writer::pin_node`]).
    pub fn get_verified_node(&self, id: &ChunkId) -> Result<VerifiedNode> {
        Ok(VerifiedNode::new(*id, self.get_node(id)?))
    }

    /// Decodes node `id`.
    pub fn get_node(&self, id: &ChunkId) -> Result<Node> {
        let (kind, bytes) = self.inner.read_chunk(id)?;
        if kind != ChunkKind::Node {
            return Err(Error::wrong_kind(*id, kind, "a node"));
        }
        Node::decode(*id, &bytes)
    }

    /// Whether chunk `id` is stored (durably or awaiting commit), and where.
    /// A chunk only the attached [`ChunkSource`] holds is at
    /// [`PackId::REMOTE`] (offset 0).
    pub fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        self.inner.locate(id)
    }

    /// Whether chunk `id` is in this store's own packs (durably or
    /// awaiting commit), and where; the attached source is not asked.
    pub fn locate_local(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        self.inner.locate_local(id)
    }

    /// Attaches the place chunks missing here are fetched from (the remote
    /// tier), replacing any attached before. See [`ChunkSource`].
    pub fn attach_source(&self, source: Arc<dyn ChunkSource>) {
        *self.inner.source.write() = Some(source);
    }

    /// Whether a [`ChunkSource`] is attached.
    pub fn has_source(&self) -> bool {
        self.inner.source.read().is_some()
    }

    /// The stored frame of chunk `id` (header and payload, exactly as in
    /// its pack) after its crc32 is checked, if this store's own packs
    /// hold it. What the remote tier uploads.
    pub fn local_frame(&self, id: &ChunkId) -> Result<Option<(ChunkLocation, Vec<u8>)>> {
        let Some(location) = self.inner.locate_local(id)? else {
            return Ok(None);
        };
        let frame = self.inner.read_frame_bytes(id, &location)?;
        let header = frame::check(&frame).map_err(|reason| Error::CorruptChunk {
            id: *id,
            pack: location.pack,
            offset: location.offset,
            reason,
        })?;
        if header.id != *id || header.kind != location.kind {
            return Err(Error::CorruptChunk {
                id: *id,
                pack: location.pack,
                offset: location.offset,
                reason: "the index points at the frame of another chunk".into(),
            });
        }
        Ok(Some((location, frame)))
    }

    /// The ref called `name`.
    pub fn get_ref(&self, name: &str) -> Result<Option<RefValue>> {
        validate_ref_name(name)?;
        self.inner.index.get_ref(name)
    }

    /// Refs whose names start with `prefix` (all with `""`).
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<(String, RefValue)>> {
        self.inner.index.list_refs(prefix)
    }

    /// Points ref `name` at an existing chunk `root`, durably, if the ref's
    /// current state matches `expect`.
    pub fn set_ref(&self, name: &str, root: ChunkId, expect: RefExpectation) -> Result<RefValue> {
        self.writer("set ref").set_ref(name, root, expect)
    }

    /// Deletes ref `name` durably if its state matches `expect`. What only
    /// it reached becomes collectable.
    pub fn delete_ref(&self, name: &str, expect: RefExpectation) -> Result<RefValue> {
        validate_ref_name(name)?;
        let _guard = self.inner.refs_lock.lock();
        let current = self.inner.index.get_ref(name)?;
        let Some(current) = current else {
            return Err(Error::RefNotFound { name: name.into() });
        };
        expect.check(name, Some(&current))?;
        self.inner.index.write_ref(name, None)?;
        Ok(current)
    }

    /// The leases of operations in flight.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.inner.leases.list()
    }

    /// Makes everything written so far durable.
    pub fn commit(&self) -> Result<()> {
        let target = self.inner.appender.lock().seq;
        self.inner.commit_through(target)
    }

    /// Group commits (each: one fdatasync per touched pack and one synced
    /// index write) performed since this store was opened.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// The index database (for fsck, stats and damage tests).
    #[doc(hidden)]
    pub fn index(&self) -> &IndexDb {
        &self.inner.index
    }

    /// The directory holding pack files.
    pub fn packs_dir(&self) -> &Path {
        &self.inner.packs_dir
    }

    /// Whether data chunk `id` is in the chunk cache (for read-ahead tests).
    #[doc(hidden)]
    pub fn is_cached(&self, id: &ChunkId) -> bool {
        self.inner.chunk_cache.peek(id).is_some()
    }

    /// Drops data chunk `id` from the chunk cache: a reader with a cache
    /// of its own (the kernel's page cache of a FUSE mount) has taken the
    /// bytes a read-ahead loaded for it.
    pub fn uncache(&self, id: &ChunkId) {
        self.inner.chunk_cache.remove(id);
    }

    /// The bytes of chunk `id` with its kind, and whether this call read
    /// it from its pack (it was neither cached nor being read by another).
    pub fn get_noting(&self, id: &ChunkId) -> Result<(ChunkKind, Bytes, bool)> {
        self.inner.read_chunk_noting(id)
    }

    /// Loads into the chunk cache, verified, the data chunks of `ids`
    /// that are neither cached nor being read, reading frames next to each
    /// other in one pack together in large direct reads on a pool of their
    /// own (see `readahead.rs`). Returns the ids this call loaded. Only a
    /// head start: a chunk it skips or fails on is left to the read that
    /// asks for it, which reports what is wrong.
    pub(crate) fn load_ahead(&self, ids: &[ChunkId]) -> Vec<ChunkId> {
        self.inner.load_ahead(ids)
    }

    /// Bytes the chunk cache holds (for read-ahead tests).
    #[doc(hidden)]
    pub fn cached_bytes(&self) -> u64 {
        self.inner.chunk_cache.weight()
    }

    /// Drops cached chunks and open pack files, so the next reads go to
    /// the pack files on disk.
    pub fn clear_cache(&self) {
        self.inner.chunk_cache.clear();
        self.inner.blob_nodes.clear();
        self.inner.open_packs.clear();
        self.inner.direct_packs.clear();
    }
}

/// A write operation in flight, holding a lease on everything it writes.
/// Methods take `&self`, so one writer can be shared by many threads.
pub struct Writer {
    store: Store,
    lease_id: u64,
    lease: Arc<LeaseSet>,
    needs_seq: AtomicU64,
    /// Chunks known to be stored and kept alive by this writer: those it
    /// put or pinned, and those a node it pinned links to. `put_node`
    /// does not look them up again.
    known: Mutex<ChunkSet>,
}

/// A set of chunk ids, hashed with a fast seeded hasher (ids are BLAKE3
/// output, but a data chunk's id is chosen by whoever writes the data).
type ChunkSet = HashSet<ChunkId, foldhash::quality::RandomState>;

impl Drop for Writer {
    fn drop(&mut self) {
        self.store.inner.leases.release(self.lease_id);
    }
}

impl Writer {
    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores `bytes` as a data chunk. Writes nothing if the content is
    /// already stored. Durable after [`Writer::commit`].
    pub fn put_data(&self, bytes: &[u8]) -> Result<PutOutcome> {
        self.put(ChunkKind::Data, bytes)
    }

    /// Stores a chunk whose id the caller already computed (the blob writer
    /// hashes in parallel). `id` must be `ChunkId::compute(kind, bytes)`.
    pub(crate) fn put_hashed(
        &self,
        id: ChunkId,
        kind: ChunkKind,
        bytes: &[u8],
    ) -> Result<PutOutcome> {
        debug_assert_eq!(id, ChunkId::compute(kind, bytes));
        let outcome = self.store.inner.put_hashed(&self.lease, id, kind, bytes)?;
        self.needs_seq.fetch_max(outcome.seq, Ordering::AcqRel);
        self.known.lock().insert(id);
        Ok(outcome)
    }

    fn put(&self, kind: ChunkKind, bytes: &[u8]) -> Result<PutOutcome> {
        if bytes.len() > MAX_CHUNK_LEN {
            return Err(Error::ChunkTooLarge {
                len: bytes.len(),
                max: MAX_CHUNK_LEN,
            });
        }
        self.put_hashed(ChunkId::compute(kind, bytes), kind, bytes)
    }

    /// Stores a node. Every chunk it links to must be in the store; the
    /// node and its links are pinned before the links are checked, so none
    /// of them can be collected once this returns.
    pub fn put_node(&self, node: &Node) -> Result<PutOutcome> {
        let bytes = node.encode()?;
        if bytes.len() > MAX_CHUNK_LEN {
            return Err(Error::ChunkTooLarge {
                len: bytes.len(),
                max: MAX_CHUNK_LEN,
            });
        }
        let id = ChunkId::compute(ChunkKind::Node, &bytes);
        self.store.inner.leases.touch(&self.lease, id);
        // A known link is kept alive already (this writer put or pinned
        // it, or pinned a node that reaches it); the others are pinned
        // before they are looked up.
        let unknown: Vec<ChunkId> = {
            let known = self.known.lock();
            node.links
                .iter()
                .filter(|link| !known.contains(*link))
                .copied()
                .collect()
        };
        for link in unknown {
            self.store.inner.leases.touch(&self.lease, link);
            if self.store.inner.locate(&link)?.is_none() {
                return Err(Error::DanglingLink { node: id, link });
            }
        }
        self.put_hashed(id, ChunkKind::Node, &bytes)
    }

    /// Pins an existing chunk (and what it links to) for the life of this
    /// writer, e.g. a base tree a new structure will link to.
    pub fn pin(&self, id: &ChunkId) -> Result<()> {
        self.store.inner.leases.touch(&self.lease, *id);
        match self.store.inner.locate(id)? {
            Some(_) => {
                self.known.lock().insert(*id);
                Ok(())
            }
            None => Err(Error::ChunkNotFound { id: *id }),
        }
    }

    /// Pins a stored node and takes the chunks it links to as stored from
    /// now on, so that [`Writer::put_node`] does not look them up again:
    /// a stored node's links are in the store (what `put_node` checked
    /// when it was written, and fsck checks), and GC keeps everything a
    /// pinned node reaches. For a node rebuilt from another (a directory
    /// page with a few entries changed), this saves an index lookup per
    /// unchanged link.
    pub fn pin_node(&self, node: &VerifiedNode) -> Result<()> {
        self.pin(&node.id())?;
        self.known.lock().extend(node.node().links.iter().copied());
        Ok(())
    }

    /// [`Writer::put_node`], returning the node with its id.
    pub fn put_verified_node(&self, node: Node) -> Result<VerifiedNode> {
        let id = self.put_node(&node)?.id;
        Ok(VerifiedNode::new(id, node))
    }

    /// A streaming writer for one blob cut with `chunking`.
    pub fn blob_writer(&self, chunking: Chunking) -> BlobWriter<'_> {
        BlobWriter::new(self, chunking)
    }

    /// Reads `source` to its end and stores it as a blob.
    pub fn write_blob(
        &self,
        source: &mut dyn std::io::Read,
        chunking: Chunking,
    ) -> Result<crate::blob::BlobInfo> {
        let mut blob = self.blob_writer(chunking);
        blob.read_from(source)?;
        blob.finish()
    }

    /// Makes everything this writer wrote durable (and whatever else was
    /// appended before it: commits are shared).
    pub fn commit(&self) -> Result<()> {
        self.store
            .inner
            .commit_through(self.needs_seq.load(Ordering::Acquire))
    }

    /// Commits, then points ref `name` at `root` durably if the ref's
    /// current state matches `expect` (the commit and the ref are one
    /// synced index write). Returns the new ref value.
    pub fn set_ref(&self, name: &str, root: ChunkId, expect: RefExpectation) -> Result<RefValue> {
        let mut values = self.set_refs(&[(name, Some(root), expect)])?;
        values
            .pop()
            .flatten()
            .ok_or(Error::ChunkNotFound { id: root })
    }

    /// Moves several refs at once, durably, in one synced index write
    /// that also commits everything appended so far:
    /// each `(name, Some(root), expect)` points `name` at `root`, each
    /// `(name, None, expect)` deletes it (a missing ref is no error with
    /// [`RefExpectation::Any`]). Every expectation is checked first; if one
    /// fails, nothing is written (its `RefConflict` is returned). The new
    /// values, in order (`None` for deletions).
    pub fn set_refs(
        &self,
        refs: &[(&str, Option<ChunkId>, RefExpectation)],
    ) -> Result<Vec<Option<RefValue>>> {
        for (name, _, _) in refs {
            validate_ref_name(name)?;
        }
        let inner = &self.store.inner;
        let _guard = inner.refs_lock.lock();
        let mut values = Vec::with_capacity(refs.len());
        for (name, root, expect) in refs {
            let current = inner.index.get_ref(name)?;
            if root.is_none() && current.is_none() && matches!(expect, RefExpectation::Any) {
                values.push(None);
                continue;
            }
            if root.is_none() && current.is_none() {
                return Err(Error::RefNotFound {
                    name: (*name).into(),
                });
            }
            expect.check(name, current.as_ref())?;
            let Some(root) = root else {
                values.push(None);
                continue;
            };
            inner.leases.touch(&self.lease, *root);
            // Pending or indexed: the write below commits what is pending.
            if inner.locate(root)?.is_none() {
                return Err(Error::ChunkNotFound { id: *root });
            }
            values.push(Some(RefValue {
                root: *root,
                generation: current.map_or(1, |c| c.generation + 1),
                updated_unix_nanos: now_nanos(),
            }));
        }
        let writes: Vec<(&str, Option<&RefValue>)> = refs
            .iter()
            .zip(&values)
            .map(|((name, _, _), value)| (*name, value.as_ref()))
            .collect();
        // What this writer (and any other) appended becomes durable with
        // the refs, in one synced index write after the packs' sync.
        inner.commit_with_refs(&writes)?;
        for value in values.iter().flatten() {
            inner.leases.touch_untracked(value.root);
        }
        Ok(values)
    }
}

impl Drop for Inner {
    /// A clean close commits what was appended but not yet committed, so
    /// nothing written is dropped needlessly. (Only a commit acknowledges
    /// durability; this is a courtesy to callers that forgot one.)
    fn drop(&mut self) {
        let target = self.appender.lock().seq;
        if self.write_failure.lock().is_none() {
            if let Err(e) = self.commit_through(target) {
                tracing::error!(error = %e, "could not commit on close");
            }
        }
    }
}

impl Inner {
    fn check_writable(&self) -> Result<()> {
        match self.write_failure.lock().as_ref() {
            Some(reason) => Err(Error::WritesFailed(reason.clone())),
            None => Ok(()),
        }
    }

    fn fail_writes(&self, error: &Error) {
        let mut failure = self.write_failure.lock();
        if failure.is_none() {
            tracing::error!(%error, "durability failure; the store stops accepting writes");
            *failure = Some(error.to_string());
        }
    }

    pub(crate) fn put_hashed(
        &self,
        lease: &LeaseSet,
        id: ChunkId,
        kind: ChunkKind,
        bytes: &[u8],
    ) -> Result<PutOutcome> {
        self.check_writable()?;
        // Touch before looking up: GC's sweep relies on this order.
        self.leases.touch(lease, id);
        if let Some((_, seq)) = self.pending.lock().by_id.get(&id) {
            return Ok(PutOutcome {
                id,
                written: false,
                stored_bytes: 0,
                seq: *seq,
            });
        }
        if self.index.location(&id)?.is_some() {
            return Ok(PutOutcome {
                id,
                written: false,
                stored_bytes: 0,
                seq: 0,
            });
        }
        let frame = frame::encode(id, kind, bytes, self.options.zstd_level);
        self.append_frame(id, kind, &frame)
    }

    /// Appends an encoded frame unless the chunk is already awaiting commit.
    pub(crate) fn append_frame(
        &self,
        id: ChunkId,
        kind: ChunkKind,
        frame_bytes: &[u8],
    ) -> Result<PutOutcome> {
        let (outcome, pending_count, writeback) = {
            let mut appender = self.appender.lock();
            let pending = self.pending.lock();
            if let Some((_, seq)) = pending.by_id.get(&id) {
                return Ok(PutOutcome {
                    id,
                    written: false,
                    stored_bytes: 0,
                    seq: *seq,
                });
            }
            drop(pending);
            let entry = self.append_locked(&mut appender, frame_bytes)?;
            appender.seq += 1;
            let seq = appender.seq;
            let location = ChunkLocation {
                pack: entry.0,
                offset: entry.1.offset,
                stored_len: entry.1.stored_len,
                raw_len: entry.1.raw_len,
                kind,
            };
            let mut pending = self.pending.lock();
            pending.by_id.insert(id, (location, seq));
            pending.queue.push((id, location));
            let count = pending.queue.len();
            drop(pending);
            let writeback = self.seal_if_full(&mut appender)?;
            (
                PutOutcome {
                    id,
                    written: true,
                    stored_bytes: frame_bytes.len() as u64,
                    seq,
                },
                count,
                writeback,
            )
        };
        if let Some(writeback) = writeback {
            if let Err(e) = writeback.run() {
                // Bytes of a pack may not have reached the disk, and the
                // next commit's fdatasync would not say so: nothing
                // pending may be committed.
                let error = Error::io("writing back a pack file", e);
                self.fail_writes(&error);
                return Err(error);
            }
        }
        if pending_count >= self.options.max_pending_chunks {
            self.commit_through(outcome.seq)?;
        }
        Ok(outcome)
    }

    fn append_locked(
        &self,
        appender: &mut Appender,
        frame_bytes: &[u8],
    ) -> Result<(PackId, pack::TrailerEntry)> {
        if appender.active.is_none() {
            let id = appender.next_pack;
            // Reserve the number durably first, so it is never reused.
            self.index.set_next_pack(PackId(id.0 + 1))?;
            appender.next_pack = PackId(id.0 + 1);
            appender.active = Some(ActivePack::create(&self.packs_dir, id)?);
        }
        let active = appender
            .active
            .as_mut()
            .ok_or_else(|| Error::Invariant("no active pack after creating one".into()))?;
        let entry = active
            .append(frame_bytes)
            .inspect_err(|e| self.fail_writes(e))?;
        appender.active_dirty = true;
        Ok((active.id(), entry))
    }

    /// Seals the active pack once it is full. Returns the page-cache work
    /// that is due: for a growing pack, start writing back the newest
    /// window and release the one before; for a sealed pack, release all of
    /// it once written.
    fn seal_if_full(&self, appender: &mut Appender) -> Result<Option<Writeback>> {
        let Some(active) = appender.active.as_ref() else {
            return Ok(None);
        };
        let full = active.len() >= self.config.pack_target_bytes
            || active.frame_count() >= MAX_FRAMES_PER_PACK;
        let (from, released) = (appender.writeback_from, appender.released_upto);
        if !full {
            if active.len() - from < WRITEBACK_BYTES {
                return Ok(None);
            }
            appender.writeback_from = active.len();
            appender.released_upto = from;
            return Ok(Some(Writeback {
                file: Arc::clone(active.file()),
                start: Some((from, active.len() - from)),
                release: (from > released).then(|| (released, from - released)),
            }));
        }
        let Some(active) = appender.active.take() else {
            return Ok(None);
        };
        let id = active.id();
        let file = active.seal().inspect_err(|e| self.fail_writes(e))?;
        appender.unsynced.push(Arc::clone(&file));
        appender.active_dirty = false;
        appender.sealed_since_commit = Some(id);
        appender.writeback_from = 0;
        appender.released_upto = 0;
        Ok(Some(Writeback {
            file,
            start: None,
            release: Some((released, 0)),
        }))
    }

    /// Makes every append up to sequence number `target` durable: data,
    /// then index. Callers arriving while a commit runs wait for it and
    /// usually find their chunks covered (group commit).
    pub(crate) fn commit_through(&self, target: u64) -> Result<()> {
        if self.durable_seq.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _commit = self.commit_lock.lock();
        if self.durable_seq.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        self.commit_locked(&[])
    }

    /// Commits everything appended so far and writes `refs` in the same
    /// synced index write (one sync where a commit and then a ref update
    /// would take two).
    fn commit_with_refs(&self, refs: &[(&str, Option<&RefValue>)]) -> Result<()> {
        let _commit = self.commit_lock.lock();
        self.commit_locked(refs)
    }

    /// A group commit, with the commit lock held.
    fn commit_locked(&self, refs: &[(&str, Option<&RefValue>)]) -> Result<()> {
        self.check_writable()?;
        let (upto, files, entries, sealed_below) = {
            let mut appender = self.appender.lock();
            let mut files = std::mem::take(&mut appender.unsynced);
            if appender.active_dirty {
                if let Some(active) = &appender.active {
                    files.push(Arc::clone(active.file()));
                }
                appender.active_dirty = false;
            }
            let entries = std::mem::take(&mut self.pending.lock().queue);
            let sealed_below = appender.sealed_since_commit.take().map(|p| PackId(p.0 + 1));
            (appender.seq, files, entries, sealed_below)
        };
        let started = std::time::Instant::now();
        let result = (|| {
            for file in &files {
                file.sync_data()
                    .map_err(|e| Error::io("syncing a pack file", e))?;
            }
            let synced = started.elapsed();
            self.index
                .record_locations_and_refs(&entries, sealed_below, refs)?;
            tracing::debug!(
                chunks = entries.len(),
                packs = files.len(),
                sync_ms = synced.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "commit"
            );
            Ok(())
        })();
        if let Err(e) = result {
            self.fail_writes(&e);
            return Err(e);
        }
        {
            let mut pending = self.pending.lock();
            for (id, location) in &entries {
                if pending.by_id.get(id).is_some_and(|(l, _)| l == location) {
                    pending.by_id.remove(id);
                }
            }
        }
        self.durable_seq.store(upto, Ordering::Release);
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The active pack's id, or the id the next pack will get: packs below
    /// it are sealed.
    pub(crate) fn active_pack_floor(&self) -> PackId {
        let appender = self.appender.lock();
        appender
            .active
            .as_ref()
            .map_or(appender.next_pack, |a| a.id())
    }

    pub(crate) fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        if let Some(location) = self.locate_local(id)? {
            return Ok(Some(location));
        }
        let Some(source) = self.source.read().clone() else {
            return Ok(None);
        };
        Ok(source.lookup(id)?.map(|remote| ChunkLocation {
            pack: PackId::REMOTE,
            offset: 0,
            stored_len: remote.stored_len,
            raw_len: remote.raw_len,
            kind: remote.kind,
        }))
    }

    pub(crate) fn locate_local(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        if let Some((location, _)) = self.pending.lock().by_id.get(id) {
            return Ok(Some(*location));
        }
        self.index.location(id)
    }

    pub(crate) fn read_chunk(&self, id: &ChunkId) -> Result<(ChunkKind, Bytes)> {
        self.read_chunk_noting(id)
            .map(|(kind, bytes, _)| (kind, bytes))
    }

    /// [`Inner::read_chunk`], and whether this call read the chunk from
    /// its pack (rather than finding it cached, or read by another).
    pub(crate) fn read_chunk_noting(&self, id: &ChunkId) -> Result<(ChunkKind, Bytes, bool)> {
        // One reader per chunk at a time: a reader that misses while the
        // same chunk is being read (the read-ahead and the reader it works
        // for, or two sandboxes) waits for that read instead of repeating
        // it. Only data chunks are cached (nodes are cached decoded); a
        // node read passes through as `Uncached`.
        enum Miss {
            Uncached(ChunkKind, Bytes),
            Failed(Error),
        }
        let mut loaded = false;
        let read = self.chunk_cache.get_or_insert_with(id, || {
            loaded = true;
            let (kind, bytes) = self.read_chunk_uncached(id).map_err(Miss::Failed)?;
            match kind {
                ChunkKind::Data => Ok(bytes),
                other => Err(Miss::Uncached(other, bytes)),
            }
        });
        match read {
            Ok(bytes) => Ok((ChunkKind::Data, bytes, loaded)),
            Err(Miss::Uncached(kind, bytes)) => Ok((kind, bytes, true)),
            Err(Miss::Failed(e)) => Err(e),
        }
    }

    /// Reads and verifies chunk `id` from its pack, not touching the cache.
    fn read_chunk_uncached(&self, id: &ChunkId) -> Result<(ChunkKind, Bytes)> {
        let location = self.locate(id)?.ok_or(Error::ChunkNotFound { id: *id })?;
        let bytes = match self.read_frame(id, &location) {
            // GC may have moved the chunk to another pack between the lookup
            // and the read; look it up once more.
            Err(Error::PackMissing { .. }) => match self.locate(id)? {
                Some(moved) if moved != location => self.read_frame(id, &moved)?,
                _ => {
                    return Err(Error::PackMissing {
                        id: *id,
                        pack: location.pack,
                    })
                }
            },
            other => other?,
        };
        Ok((location.kind, bytes))
    }

    /// A frame's bytes as stored, unchecked: from a local pack, or from
    /// the attached source for [`PackId::REMOTE`].
    fn read_frame_bytes(&self, id: &ChunkId, location: &ChunkLocation) -> Result<Vec<u8>> {
        let len = frame::FRAME_HEADER_LEN + location.stored_len as usize;
        if location.pack.is_remote() {
            let source = self.source.read().clone();
            let source = source.ok_or(Error::ChunkNotFound { id: *id })?;
            let bytes = source.fetch_frame(id)?;
            if bytes.len() != len {
                return Err(Error::CorruptChunk {
                    id: *id,
                    pack: location.pack,
                    offset: 0,
                    reason: format!(
                        "the remote tier returned {} bytes for a frame of {len}",
                        bytes.len()
                    ),
                });
            }
            return Ok(bytes);
        }
        let file = self.pack_file(id, location.pack)?;
        let mut buf = vec![0u8; len];
        use std::os::unix::fs::FileExt;
        if let Err(e) = file.read_exact_at(&mut buf, location.offset) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(Error::CorruptChunk {
                    id: *id,
                    pack: location.pack,
                    offset: location.offset,
                    reason: "the frame runs past the end of the pack".into(),
                });
            }
            return Err(Error::io(format!("reading pack {}", location.pack), e));
        }
        Ok(buf)
    }

    /// Reads and verifies one frame.
    pub(crate) fn read_frame(&self, id: &ChunkId, location: &ChunkLocation) -> Result<Bytes> {
        let buf = self.read_frame_bytes(id, location)?;
        verify_frame(id, location, Bytes::from(buf))
    }

    pub(crate) fn pack_file(&self, id: &ChunkId, pack: PackId) -> Result<Arc<File>> {
        self.open_packs
            .get_or_insert_with(&pack, || match pack::open_pack(&self.packs_dir, pack) {
                Ok(file) => Ok(Arc::new(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(Error::PackMissing { id: *id, pack })
                }
                Err(e) => Err(Error::io(format!("opening pack {pack}"), e)),
            })
    }

    /// Forgets an open pack file (after GC deleted it).
    pub(crate) fn forget_pack(&self, pack: PackId) {
        self.open_packs.remove(&pack);
        self.direct_packs.forget(pack);
    }

    /// Reads the links of node `id` (for GC and fsck).
    pub(crate) fn node_links(&self, id: &ChunkId) -> Result<Vec<ChunkId>> {
        let (_, bytes) = self.read_chunk(id)?;
        let links = node::links_of(*id, &bytes)?.collect();
        Ok(links)
    }
}

/// Checks the bytes of one frame read from `location` (header, crc32,
/// BLAKE3 of the decoded chunk, that it is the frame of `id` and of the
/// kind the index gives) and returns the chunk's bytes.
pub(crate) fn verify_frame(id: &ChunkId, location: &ChunkLocation, frame: Bytes) -> Result<Bytes> {
    let corrupt = |reason: String| Error::CorruptChunk {
        id: *id,
        pack: location.pack,
        offset: location.offset,
        reason,
    };
    let (header, bytes) = frame::decode_bytes(frame).map_err(corrupt)?;
    if header.id != *id {
        return Err(corrupt(format!(
            "the index points at the frame of another chunk ({})",
            header.id.short()
        )));
    }
    if header.kind != location.kind {
        return Err(corrupt("the frame's kind differs from the index".into()));
    }
    Ok(bytes)
}

pub(crate) fn read_marker(home: &Path) -> Result<Marker> {
    let path = home.join(MARKER_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotAStore {
                path: home.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let marker: Marker = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidConfig(format!("{} does not parse: {e}", path.display())))?;
    if marker.format != "strata-cas" {
        return Err(Error::NotAStore {
            path: home.to_path_buf(),
        });
    }
    if marker.version != STORE_VERSION {
        return Err(Error::UnsupportedVersion {
            path: home.to_path_buf(),
            found: marker.version,
            supported: STORE_VERSION,
        });
    }
    marker.config.validate()?;
    Ok(marker)
}

/// Writes a small file atomically and durably (temp file, fsync, rename).
fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file =
        File::create(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
    Ok(())
}
