//! The tier: a bucket, what this node knows of it, and the disk cache;
//! the chunk source a store reads through.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cas::{ChunkId, ChunkSource, RemoteChunk, StoreConfig};
use futures::future::{BoxFuture, FutureExt, Shared};
use object_store::ObjectStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::bucket::{Bucket, RequestCounts};
use crate::cache::{DiskCache, BLOCK_BYTES};
use crate::config::RemoteConfig;
use crate::error::{Error, Result};
use crate::index::{RemoteIndex, RemoteLocation};
use crate::layout;

/// Blocks fetched ahead of a read of a block that was itself fetched
/// ahead (a reader moving through a tree: 96 MiB, about six 16 MiB GETs
/// in flight, so a distant store's per-request latency is hidden).
const READ_AHEAD_BLOCKS: u64 = 24;
/// Blocks fetched ahead of any other read (a first read, or a reader that
/// jumped: less is fetched on a guess).
const READ_AHEAD_BLOCKS_AFTER_JUMP: u64 = 4;
/// Most blocks remembered as fetched ahead and not read yet.
const MAX_AHEAD_REMEMBERED: usize = 1 << 16;
/// Most blocks one read-ahead GET asks for (16 MiB: fewer, larger
/// requests, within the 8–16 MB ranges object stores serve best).
const SPAN_BLOCKS: u64 = 4;
/// Most blocks of a node pack fetched ahead when a tree is pulled.
const MAX_NODE_PREFETCH_BLOCKS: u64 = 16;

/// The marker object's contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct BucketMarker {
    format: String,
    version: u32,
    /// The chunking every store using the bucket must share, so that equal
    /// content has equal chunk ids everywhere.
    chunking: serde_json::Value,
}

const MARKER_FORMAT: &str = "strata-bucket";
/// Bucket format version written by this build.
pub const BUCKET_VERSION: u32 = 1;

type BlockFuture = Shared<BoxFuture<'static, std::result::Result<Bytes, Arc<String>>>>;

pub(crate) struct Inner {
    pub(crate) bucket: Arc<Bucket>,
    pub(crate) config: RemoteConfig,
    pub(crate) index: RemoteIndex,
    cache: DiskCache,
    inflight: Mutex<HashMap<(u64, u64), BlockFuture>>,
    /// Bounds block requests in flight (foreground and read-ahead).
    requests: tokio::sync::Semaphore,
    /// This node's name in pin refs (see [`Remote::node_name`]).
    node: String,
    /// Blocks fetched ahead that no read has reached yet: a read that
    /// reaches one is a reader moving on, which gets the longer read-ahead.
    ahead: Mutex<std::collections::HashSet<(u64, u64)>>,
}

/// A node's view of the bucket. Cheap to clone.
#[derive(Clone)]
pub struct Remote {
    pub(crate) inner: Arc<Inner>,
}

impl Remote {
    /// Opens the bucket `config` names, with its disk cache in
    /// `cache_dir`, for a store configured as `store_config`. The first
    /// store to use a bucket writes its marker; a store that chunks
    /// differently is refused.
    pub fn open(
        config: &RemoteConfig,
        cache_dir: &Path,
        store_config: &StoreConfig,
    ) -> Result<Remote> {
        let store = config.open_store()?;
        Remote::with_object_store(store, config, cache_dir, store_config)
    }

    /// [`Remote::open`] over an object store made by the caller (tests and
    /// benchmarks wrap one to inject latency and faults).
    pub fn with_object_store(
        store: Arc<dyn ObjectStore>,
        config: &RemoteConfig,
        cache_dir: &Path,
        store_config: &StoreConfig,
    ) -> Result<Remote> {
        config.validate()?;
        let bucket = Bucket::new(
            store,
            config.url.clone(),
            std::time::Duration::from_secs(config.retry_secs),
        )?;
        let cache = DiskCache::open(cache_dir, config.cache_bytes).map_err(|e| {
            Error::Config(format!("opening the cache at {}: {e}", cache_dir.display()))
        })?;
        let remote = Remote {
            inner: Arc::new(Inner {
                bucket,
                config: config.clone(),
                index: RemoteIndex::default(),
                cache,
                inflight: Mutex::new(HashMap::new()),
                requests: tokio::sync::Semaphore::new(config.parallel * 2),
                node: node_name(cache_dir),
                ahead: Mutex::new(Default::default()),
            }),
        };
        // Learn the bucket's chunks in the background, while the marker is
        // checked; the first lookup waits for it.
        let inner = remote.inner.clone();
        remote.inner.bucket.spawn(async move {
            if let Err(e) = inner
                .index
                .refresh(&inner.bucket, inner.config.parallel)
                .await
            {
                tracing::warn!(error = %e, "reading the bucket's index");
            }
        });
        remote.check_marker(store_config)?;
        Ok(remote)
    }

    fn check_marker(&self, store_config: &StoreConfig) -> Result<()> {
        let chunking = serde_json::to_value(store_config.chunking)
            .map_err(|e| Error::Config(e.to_string()))?;
        let ours = BucketMarker {
            format: MARKER_FORMAT.into(),
            version: BUCKET_VERSION,
            chunking,
        };
        let bucket = self.inner.bucket.clone();
        let bytes = serde_json::to_vec_pretty(&ours).map_err(|e| Error::Config(e.to_string()))?;
        let marker = object_store::path::Path::from(layout::MARKER);
        // Read first: a bucket is set up once and opened often.
        let found = bucket.clone().run(async move {
            if let Some(found) = bucket.get(&marker).await? {
                return Ok(Some(found));
            }
            if bucket.put_new(&marker, Bytes::from(bytes)).await? {
                return Ok(None);
            }
            bucket.get(&marker).await
        })?;
        let Some(found) = found else { return Ok(()) };
        let theirs: BucketMarker = serde_json::from_slice(&found).map_err(|e| Error::Corrupt {
            object: layout::MARKER.into(),
            reason: e.to_string(),
        })?;
        if theirs.format != MARKER_FORMAT {
            return Err(Error::Incompatible(format!(
                "{} is not a Strata bucket marker",
                layout::MARKER
            )));
        }
        if theirs.version != BUCKET_VERSION {
            return Err(Error::Incompatible(format!(
                "bucket format version {}, this build understands {BUCKET_VERSION}",
                theirs.version
            )));
        }
        if theirs.chunking != ours.chunking {
            return Err(Error::Incompatible(format!(
                "the bucket's stores chunk with {}, this store with {}",
                theirs.chunking, ours.chunking
            )));
        }
        Ok(())
    }

    /// This node's name in the bucket's pin refs: its host name and a
    /// hash of its cache directory (two nodes on one host differ; one node
    /// keeps its name across restarts).
    pub fn node_name(&self) -> &str {
        &self.inner.node
    }

    /// The bucket (for its request counts and raw access).
    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.inner.bucket
    }

    /// The configuration.
    pub fn config(&self) -> &RemoteConfig {
        &self.inner.config
    }

    /// Requests made so far.
    pub fn counts(&self) -> RequestCounts {
        self.inner.bucket.counts()
    }

    /// Bytes in the disk cache.
    pub fn cache_used_bytes(&self) -> u64 {
        self.inner.cache.used_bytes()
    }

    /// Empties the disk cache.
    pub fn clear_cache(&self) {
        self.inner.cache.clear();
    }

    /// Chunks and packs this node knows the bucket holds.
    pub fn known(&self) -> (usize, usize) {
        (
            self.inner.index.chunk_count(),
            self.inner.index.pack_count(),
        )
    }

    /// Makes `store` read chunks it lacks from the bucket.
    pub fn attach(&self, store: &cas::Store) {
        store.attach_source(Arc::new(self.clone()));
    }

    /// Reads the index objects written since the last refresh.
    pub fn refresh(&self) -> Result<()> {
        let inner = self.inner.clone();
        self.inner.bucket.run(async move {
            inner
                .index
                .refresh(&inner.bucket, inner.config.parallel)
                .await
        })
    }

    /// Where chunk `id` is in the bucket; a miss refreshes the listing
    /// (at most twice a second).
    pub fn locate(&self, id: &ChunkId) -> Result<Option<RemoteLocation>> {
        if let Some(location) = self.inner.index.get(id) {
            return Ok(Some(location));
        }
        // A refresh under way (the one started at opening) may bring it.
        let inner = self.inner.clone();
        self.inner.bucket.run(async move {
            inner.index.settled().await;
            Ok(())
        })?;
        if let Some(location) = self.inner.index.get(id) {
            return Ok(Some(location));
        }
        if !self.inner.index.may_refresh_on_miss() {
            return Ok(None);
        }
        self.refresh()?;
        Ok(self.inner.index.get(id))
    }

    /// Where the root a remote ref names is: a ref is written after the
    /// index objects listing everything it reaches, so a miss here always
    /// reads the index objects written since the last refresh (and after
    /// it, everything the root reaches is known too).
    pub fn locate_root(&self, id: &ChunkId) -> Result<Option<RemoteLocation>> {
        if let Some(location) = self.locate(id)? {
            return Ok(Some(location));
        }
        self.refresh()?;
        Ok(self.inner.index.get(id))
    }

    /// The frame of chunk `id`: from the disk cache if it holds a valid
    /// copy, else fetched (whole blocks, cached) with read-ahead.
    pub fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let location = self.locate(id)?.ok_or(Error::ChunkMissing { id: *id })?;
        let start = location.entry.offset;
        let len = location.entry.frame_len();
        let last_block = (start + len - 1) / BLOCK_BYTES;
        if let Some(bytes) = self.inner.cache.read(location.pack, start, len as usize) {
            if frame_is(&bytes, id) {
                let ahead = self.window(location.pack, start / BLOCK_BYTES, last_block);
                self.read_ahead(location.pack, blocks_ahead(last_block, ahead), true);
                return Ok(bytes);
            }
        }
        if (start / BLOCK_BYTES..=last_block).all(|b| self.inner.cache.has_block(location.pack, b))
        {
            // Written here, yet not readable: the cache was wiped or
            // damaged under us. Fetch its blocks again.
            self.inner.cache.forget(location.pack);
        }
        let first_block = start / BLOCK_BYTES;
        let blocks = first_block..=last_block;
        let in_flight: Option<Vec<BlockFuture>> = {
            let inflight = self.inner.inflight.lock();
            blocks
                .clone()
                .map(|block| inflight.get(&(location.pack, block)).cloned())
                .collect()
        };
        // The blocks come in the background (and the next ones after
        // them, in larger GETs of their own); unless they are already
        // coming, this frame alone is fetched now, so a first read waits
        // for one small request, not a whole block.
        let ahead = self.window(location.pack, first_block, last_block);
        self.read_ahead(location.pack, first_block..=last_block, false);
        self.read_ahead(location.pack, blocks_ahead(last_block, ahead), true);
        let frame = match in_flight {
            Some(futures) => self.assemble(&location, futures)?,
            None => {
                let bucket = self.inner.bucket.clone();
                let path = layout::pack(location.pack);
                let bytes = bucket
                    .clone()
                    .run(async move { bucket.get_range(&path, start..start + len).await })?;
                bytes.to_vec()
            }
        };
        if frame.len() as u64 != len || !frame_is(&frame, id) {
            return Err(Error::Corrupt {
                object: layout::pack(location.pack).to_string(),
                reason: format!("the frame of chunk {id} at offset {start} does not check"),
            });
        }
        Ok(frame)
    }

    /// A frame from the blocks that hold it.
    fn assemble(&self, location: &RemoteLocation, futures: Vec<BlockFuture>) -> Result<Vec<u8>> {
        let start = location.entry.offset;
        let len = location.entry.frame_len();
        let first_block = start / BLOCK_BYTES;
        let blocks = self.inner.bucket.run(async move {
            let mut out = Vec::with_capacity(futures.len());
            for future in futures {
                out.push(future.await.map_err(|e| Error::Bucket {
                    context: "fetching a block".into(),
                    source: object_store::Error::Generic {
                        store: "strata",
                        source: e.to_string().into(),
                    },
                })?);
            }
            Ok(out)
        })?;
        let mut frame = Vec::with_capacity(len as usize);
        let mut at = start;
        for (i, block) in blocks.iter().enumerate() {
            let block_start = (first_block + i as u64) * BLOCK_BYTES;
            let from = (at - block_start) as usize;
            let to = ((start + len).min(block_start + block.len() as u64) - block_start) as usize;
            if from > to || to > block.len() {
                break;
            }
            frame.extend_from_slice(&block[from..to]);
            at = block_start + to as u64;
        }
        Ok(frame)
    }

    /// Starts fetching the whole node pack holding `root` (a pushed
    /// tree's directories), so that a walk of the tree finds them here.
    pub fn prefetch_nodes_of(&self, root: &ChunkId) {
        let Some(location) = self.inner.index.get(root) else {
            return;
        };
        if !self.inner.index.is_node_pack(location.pack) {
            return;
        }
        let Some(len) = self.inner.index.pack_len(location.pack) else {
            return;
        };
        // Block by block, all at once: a walk from the root needs
        // directories from anywhere in the pack, soon.
        let blocks = len.div_ceil(BLOCK_BYTES).min(MAX_NODE_PREFETCH_BLOCKS);
        self.read_ahead_in(location.pack, 0..=blocks.saturating_sub(1), 1, false);
    }

    /// Starts fetching `blocks` of `pack` that are neither cached nor in
    /// flight: each run of consecutive ones in GETs of up to
    /// [`SPAN_BLOCKS`] blocks.
    fn read_ahead(&self, pack: u64, blocks: RangeInclusive<u64>, ahead: bool) {
        let Some(pack_len) = self.inner.index.pack_len(pack) else {
            return;
        };
        self.read_ahead_in(pack, blocks.clone(), SPAN_BLOCKS, ahead);
        // Blocks past the pack's end are the first ones of the packs the
        // same push uploaded next.
        let (mut pack, mut end) = (pack, pack_len.div_ceil(BLOCK_BYTES));
        let mut past = (blocks.end() + 1).saturating_sub(end.max(*blocks.start()));
        while past > 0 {
            let Some(next) = self.inner.index.next_pack(pack) else {
                return;
            };
            let Some(len) = self.inner.index.pack_len(next) else {
                return;
            };
            end = len.div_ceil(BLOCK_BYTES);
            if end == 0 {
                return;
            }
            self.read_ahead_in(next, 0..=past.min(end) - 1, SPAN_BLOCKS, ahead);
            (pack, past) = (next, past.saturating_sub(end));
        }
    }

    /// How far to read ahead of a read of `first..=last` of `pack`: far if
    /// it reached a block fetched ahead (which it takes off the list).
    fn window(&self, pack: u64, first: u64, last: u64) -> u64 {
        let mut ahead = self.inner.ahead.lock();
        let mut reached = false;
        for block in first..=last {
            reached |= ahead.remove(&(pack, block));
        }
        match reached {
            true => READ_AHEAD_BLOCKS,
            false => READ_AHEAD_BLOCKS_AFTER_JUMP,
        }
    }

    /// [`Remote::read_ahead`] within one pack, in GETs of up to `span`
    /// blocks (`ahead`: blocks no read asked for yet, remembered).
    fn read_ahead_in(&self, pack: u64, blocks: RangeInclusive<u64>, span: u64, ahead: bool) {
        let Some(pack_len) = self.inner.index.pack_len(pack) else {
            return;
        };
        let mut run: Option<(u64, u64)> = None;
        let start = |first: u64, last: u64| {
            if ahead {
                let mut remembered = self.inner.ahead.lock();
                if remembered.len() >= MAX_AHEAD_REMEMBERED {
                    remembered.clear();
                }
                remembered.extend((first..=last).map(|block| (pack, block)));
            }
            let future = span_future(&self.inner, pack, first, last, pack_len);
            self.inner.bucket.spawn(async move {
                let _ = future.await;
            });
        };
        for block in blocks {
            if block * BLOCK_BYTES >= pack_len {
                break;
            }
            let wanted = !self.inner.cache.has_block(pack, block)
                && !self.inner.inflight.lock().contains_key(&(pack, block));
            run = match (run, wanted) {
                (Some((first, last)), true) if last + 1 == block && block - first < span => {
                    Some((first, block))
                }
                (Some((first, last)), _) => {
                    start(first, last);
                    wanted.then_some((block, block))
                }
                (None, _) => wanted.then_some((block, block)),
            };
        }
        if let Some((first, last)) = run {
            start(first, last);
        }
    }
}

/// The blocks read ahead of a read that ended in block `last`: the next
/// `ahead`, and on to the end of the [`SPAN_BLOCKS`]-aligned group the
/// last of them is in, so that as reads move on, each group is asked for
/// whole, in one GET, when they first come near it.
fn blocks_ahead(last: u64, ahead: u64) -> RangeInclusive<u64> {
    let end = last + ahead;
    last + 1..=(end / SPAN_BLOCKS + 1) * SPAN_BLOCKS - 1
}

/// See [`Remote::node_name`].
fn node_name(cache_dir: &Path) -> String {
    let dir = std::fs::canonicalize(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf());
    let hash = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    let host: String = crate::refs::host_name()
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '-',
        })
        .take(64)
        .collect();
    format!("{host}-{}", &hash[..8])
}

/// Whether `bytes` is a frame of chunk `id` whose crc checks.
fn frame_is(bytes: &[u8], id: &ChunkId) -> bool {
    cas::check_frame(bytes).is_ok_and(|header| header.id == *id)
}

/// One GET of blocks `first..=last` of `pack` (none of them cached or in
/// flight), each written to the disk cache as it comes; each block is in
/// flight, shared by everyone who needs it, until then.
fn span_future(inner: &Arc<Inner>, pack: u64, first: u64, last: u64, pack_len: u64) -> BlockFuture {
    let mut inflight = inner.inflight.lock();
    let me = inner.clone();
    let span = async move {
        let result = async {
            let _permit = me.requests.acquire().await.map_err(|e| e.to_string())?;
            let start = first * BLOCK_BYTES;
            let end = ((last + 1) * BLOCK_BYTES).min(pack_len);
            let bytes = me
                .bucket
                .get_range(&layout::pack(pack), start..end)
                .await
                .map_err(|e| e.to_string())?;
            if bytes.len() as u64 != end - start {
                return Err(format!(
                    "pack {pack:016x}: {} bytes came for the {} asked",
                    bytes.len(),
                    end - start
                ));
            }
            for block in first..=last {
                let from = ((block - first) * BLOCK_BYTES) as usize;
                let to = (from + BLOCK_BYTES as usize).min(bytes.len());
                me.cache.write_block(pack, block, &bytes[from..to]);
            }
            Ok::<Bytes, String>(bytes)
        }
        .await;
        let mut inflight = me.inflight.lock();
        for block in first..=last {
            inflight.remove(&(pack, block));
        }
        result.map_err(Arc::new)
    }
    .boxed()
    .shared();
    for block in first..=last {
        let span = span.clone();
        let from = ((block - first) * BLOCK_BYTES) as usize;
        let future = async move {
            let bytes = span.await?;
            let to = (from + BLOCK_BYTES as usize).min(bytes.len());
            Ok(bytes.slice(from..to))
        }
        .boxed()
        .shared();
        inflight.insert((pack, block), future);
    }
    span
}

impl ChunkSource for Remote {
    fn lookup(&self, id: &ChunkId) -> cas::Result<Option<RemoteChunk>> {
        Ok(self.locate(id)?.map(|location| RemoteChunk {
            kind: location.entry.kind,
            raw_len: location.entry.raw_len,
            stored_len: location.entry.stored_len,
        }))
    }

    fn fetch_frame(&self, id: &ChunkId) -> cas::Result<Vec<u8>> {
        Ok(self.fetch(id)?)
    }
}
