//! Which pack in the bucket holds which chunk.
//!
//! Each push writes one index object listing, for every pack it uploaded,
//! the pack's frames (the same 52-byte entries as a pack's trailer). A
//! node learns the bucket's chunks by listing `index/` and reading the
//! index objects it has not read yet; pack trailers say the same, so an
//! index object can always be rebuilt from its packs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cas::{ChunkId, TrailerEntry, TRAILER_ENTRY_LEN};
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::layout;

const MAGIC: [u8; 8] = *b"STRIDX01";
const END_MAGIC: [u8; 8] = *b"STRIDXEN";
const HEADER_LEN: usize = 16;
const PACK_RECORD_LEN: usize = 24;
const FOOTER_LEN: usize = 16;

/// One uploaded pack and its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackListing {
    pub number: u64,
    /// Length of the pack object.
    pub len: u64,
    pub entries: Vec<TrailerEntry>,
}

/// Encodes an index object (`cas/FORMAT.md`).
pub fn encode(packs: &[PackListing]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for pack in packs {
        out.extend_from_slice(&pack.number.to_le_bytes());
        out.extend_from_slice(&pack.len.to_le_bytes());
        out.extend_from_slice(&(pack.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for entry in &pack.entries {
            entry.encode(&mut out);
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&END_MAGIC);
    out
}

/// Decodes an index object; `object` names it in errors.
pub fn decode(bytes: &[u8], object: &str) -> Result<Vec<PackListing>> {
    let bad = |reason: &str| Error::Corrupt {
        object: object.to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_LEN + FOOTER_LEN || bytes[..8] != MAGIC {
        return Err(bad("not an index object (magic)"));
    }
    let body_end = bytes.len() - FOOTER_LEN;
    if bytes[body_end + 8..] != END_MAGIC {
        return Err(bad("truncated (no end magic)"));
    }
    let crc = u32::from_le_bytes(bytes[body_end..body_end + 4].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[..body_end]) != crc {
        return Err(bad("checksum (crc32) mismatch"));
    }
    let count = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
    let mut at = HEADER_LEN;
    let mut packs = Vec::new();
    for _ in 0..count {
        if at + PACK_RECORD_LEN > body_end {
            return Err(bad("pack record runs past the end"));
        }
        let number = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or_default());
        let entries =
            u32::from_le_bytes(bytes[at + 16..at + 20].try_into().unwrap_or_default()) as usize;
        at += PACK_RECORD_LEN;
        let end = entries
            .checked_mul(TRAILER_ENTRY_LEN)
            .and_then(|n| n.checked_add(at))
            .filter(|end| *end <= body_end)
            .ok_or_else(|| bad("entry list runs past the end"))?;
        let mut list = Vec::with_capacity(entries);
        for raw in bytes[at..end].chunks_exact(TRAILER_ENTRY_LEN) {
            let entry = TrailerEntry::decode(raw).ok_or_else(|| bad("undecodable entry"))?;
            if entry.offset < cas::PACK_HEADER_LEN || entry.offset + entry.frame_len() > len {
                return Err(bad("entry outside its pack"));
            }
            list.push(entry);
        }
        at = end;
        packs.push(PackListing {
            number,
            len,
            entries: list,
        });
    }
    if at != body_end {
        return Err(bad("trailing bytes after the last pack"));
    }
    Ok(packs)
}

/// Where a chunk sits in the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteLocation {
    pub pack: u64,
    pub entry: TrailerEntry,
}

/// The chunks this node knows the bucket holds.
#[derive(Default)]
pub struct RemoteIndex {
    chunks: RwLock<HashMap<ChunkId, RemoteLocation>>,
    /// Pack number → object length.
    packs: RwLock<HashMap<u64, u64>>,
    /// Packs holding only nodes.
    node_packs: RwLock<HashSet<u64>>,
    /// Data pack → the data pack uploaded after it by the same push
    /// (listed after it in one index object): a push walks a tree in
    /// order, so a reader of one pack's end reads the next one's start.
    next_pack: RwLock<HashMap<u64, u64>>,
    /// Index objects already read.
    read: Mutex<HashSet<u64>>,
    /// When the listing was last refreshed.
    refreshed: Mutex<Option<Instant>>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// Shortest time between two refreshes caused by misses.
const MISS_REFRESH_INTERVAL: Duration = Duration::from_millis(500);

impl RemoteIndex {
    /// Where chunk `id` is, from what is known.
    pub fn get(&self, id: &ChunkId) -> Option<RemoteLocation> {
        self.chunks.read().get(id).copied()
    }

    /// Whether chunk `id` is known to be in the bucket.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.read().contains_key(id)
    }

    /// The length of pack object `number`, if known.
    pub fn pack_len(&self, number: u64) -> Option<u64> {
        self.packs.read().get(&number).copied()
    }

    /// Whether every frame of pack `number` holds a node (a push puts
    /// nodes in packs of their own, so that a tree's directories come in
    /// few requests).
    pub fn is_node_pack(&self, number: u64) -> bool {
        self.node_packs.read().contains(&number)
    }

    /// The data pack a push uploaded after data pack `number`, if known.
    pub fn next_pack(&self, number: u64) -> Option<u64> {
        self.next_pack.read().get(&number).copied()
    }

    /// Chunks known.
    pub fn chunk_count(&self) -> usize {
        self.chunks.read().len()
    }

    /// Packs known.
    pub fn pack_count(&self) -> usize {
        self.packs.read().len()
    }

    /// Adds the packs of one index object.
    pub fn add(&self, packs: &[PackListing]) {
        let mut chunks = self.chunks.write();
        let mut known = self.packs.write();
        let mut node_packs = self.node_packs.write();
        let mut next_pack = self.next_pack.write();
        let mut previous_data = None;
        for pack in packs {
            known.insert(pack.number, pack.len);
            if !pack.entries.is_empty()
                && pack.entries.iter().all(|e| e.kind == cas::ChunkKind::Node)
            {
                node_packs.insert(pack.number);
            } else {
                if let Some(previous) = previous_data {
                    next_pack.insert(previous, pack.number);
                }
                previous_data = Some(pack.number);
            }
            for entry in &pack.entries {
                chunks.entry(entry.id).or_insert(RemoteLocation {
                    pack: pack.number,
                    entry: *entry,
                });
            }
        }
    }

    /// Records that index object `number` was read (this node wrote it).
    pub fn mark_read(&self, number: u64) {
        self.read.lock().insert(number);
    }

    /// Waits for a refresh in progress, if any, to end.
    pub async fn settled(&self) {
        drop(self.refreshing.lock().await);
    }

    /// Reads the index objects not read yet.
    pub async fn refresh(&self, bucket: &Arc<Bucket>, parallel: usize) -> Result<()> {
        let _one = self.refreshing.lock().await;
        let started = Instant::now();
        let listed = bucket
            .list(&object_store::path::Path::from(layout::INDEX))
            .await?;
        let listed_numbers: HashSet<u64> = listed
            .iter()
            .filter_map(|meta| layout::index_number(&meta.location))
            .collect();
        if self.read.lock().iter().any(|n| !listed_numbers.contains(n)) {
            // A collection merged index objects and deleted packs: what
            // this node knew may name packs that are gone. Start over.
            self.chunks.write().clear();
            self.packs.write().clear();
            self.node_packs.write().clear();
            self.next_pack.write().clear();
            self.read.lock().clear();
        }
        let new: Vec<u64> = {
            let read = self.read.lock();
            listed
                .iter()
                .filter_map(|meta| layout::index_number(&meta.location))
                .filter(|n| !read.contains(n))
                .collect()
        };
        let fetched: Vec<Result<(u64, Option<Bytes>)>> = futures::stream::iter(new)
            .map(|number| {
                let bucket = bucket.clone();
                async move { Ok((number, bucket.get(&layout::index(number)).await?)) }
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        for item in fetched {
            let (number, bytes) = item?;
            // Deleted between the listing and the read (GC merged it).
            let Some(bytes) = bytes else { continue };
            let packs = decode(&bytes, layout::index(number).as_ref())?;
            self.add(&packs);
            self.mark_read(number);
        }
        *self.refreshed.lock() = Some(started);
        Ok(())
    }

    /// Whether a miss may refresh the listing now.
    pub fn may_refresh_on_miss(&self) -> bool {
        self.refreshed
            .lock()
            .is_none_or(|at| at.elapsed() >= MISS_REFRESH_INTERVAL)
    }
}
