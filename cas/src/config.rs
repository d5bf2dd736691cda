//! Settings and limits. What is fixed when a store is created lives in
//! [`StoreConfig`] (persisted in the store's marker file); what a process may
//! choose each time it opens a store lives in [`OpenOptions`]; hard limits
//! that protect the process from hostile or broken input are constants here.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest chunk the store accepts, uncompressed (16 MiB, the largest
/// maximum FastCDC allows). Frames larger than this are treated as corrupt.
pub const MAX_CHUNK_LEN: usize = 16 << 20;

/// Most links one node may hold.
pub const MAX_NODE_LINKS: usize = 65_536;

/// Longest ref name, in bytes.
pub const MAX_REF_NAME_LEN: usize = 255;

/// Most frames one pack holds before it is sealed, whatever its size; bounds
/// the trailer a writer keeps in memory (52 bytes per frame).
pub const MAX_FRAMES_PER_PACK: usize = 262_144;

/// Default entries per blob index node: 4,096 × 48 bytes ≈ 192 KiB per node,
/// so one level covers 256 MiB of 64 KiB chunks and two levels cover 1 TiB.
pub const BLOB_FANOUT: u32 = 4_096;

/// Parameters of the chunkers. Fixed at `init`: every writer of a store must
/// cut the same content the same way for dedup to work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingConfig {
    /// FastCDC minimum chunk length.
    pub cdc_min: u32,
    /// FastCDC average (target) chunk length.
    pub cdc_avg: u32,
    /// FastCDC maximum chunk length.
    pub cdc_max: u32,
    /// Chunk length of the fixed-size chunker (memory and block images).
    pub fixed_size: u32,
}

impl Default for ChunkingConfig {
    /// 16 KiB / 64 KiB / 256 KiB content-defined chunks (casync's defaults,
    /// so dedup ratios compare like for like) and 64 KiB fixed chunks.
    fn default() -> Self {
        ChunkingConfig {
            cdc_min: 16 << 10,
            cdc_avg: 64 << 10,
            cdc_max: 256 << 10,
            fixed_size: 64 << 10,
        }
    }
}

impl ChunkingConfig {
    /// Checks the parameters against FastCDC's bounds and ours.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as cdc;
        let (min, avg, max) = (
            self.cdc_min as usize,
            self.cdc_avg as usize,
            self.cdc_max as usize,
        );
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if !(cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
            || !(cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
            || !(cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
        {
            return bad(format!(
                "FastCDC sizes {min}/{avg}/{max} are outside {}..{} / {}..{} / {}..{}",
                cdc::MINIMUM_MIN,
                cdc::MINIMUM_MAX,
                cdc::AVERAGE_MIN,
                cdc::AVERAGE_MAX,
                cdc::MAXIMUM_MIN,
                cdc::MAXIMUM_MAX
            ));
        }
        if !(min < avg && avg < max) || min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            return bad(format!(
                "FastCDC sizes must be even and min < avg < max, got {min}/{avg}/{max}"
            ));
        }
        if max > MAX_CHUNK_LEN {
            return bad(format!("cdc_max {max} exceeds {MAX_CHUNK_LEN}"));
        }
        if self.fixed_size == 0 || self.fixed_size as usize > MAX_CHUNK_LEN {
            return bad(format!(
                "fixed_size must be 1..={MAX_CHUNK_LEN}, got {}",
                self.fixed_size
            ));
        }
        Ok(())
    }
}

/// What is fixed when a store is created. Persisted as JSON in the marker
/// file `strata-store.json` (see FORMAT.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// A pack is sealed once it reaches this many bytes (default 32 MiB).
    pub pack_target_bytes: u64,
    /// Chunker parameters.
    pub chunking: ChunkingConfig,
    /// Most entries in one blob index node (tests use small values to grow
    /// deep trees from little data).
    #[serde(default = "default_fanout")]
    pub blob_fanout: u32,
}

fn default_fanout() -> u32 {
    BLOB_FANOUT
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pack_target_bytes: 32 << 20,
            chunking: ChunkingConfig::default(),
            blob_fanout: BLOB_FANOUT,
        }
    }
}

impl StoreConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        // Small packs are allowed (tests use them to exercise sealing and
        // compaction); production stores should stay within 16–64 MiB.
        if !(64 << 10..=1 << 30).contains(&self.pack_target_bytes) {
            return Err(Error::InvalidConfig(format!(
                "pack_target_bytes must be 64 KiB..1 GiB, got {}",
                self.pack_target_bytes
            )));
        }
        if !(2..=MAX_NODE_LINKS as u32).contains(&self.blob_fanout) {
            return Err(Error::InvalidConfig(format!(
                "blob_fanout must be 2..={MAX_NODE_LINKS}, got {}",
                self.blob_fanout
            )));
        }
        self.chunking.validate()
    }
}

/// Choices a process makes each time it opens a store. Nothing here changes
/// what is written to disk.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Bytes of decompressed chunks kept in memory for repeated reads.
    pub chunk_cache_bytes: u64,
    /// Bytes of RocksDB block cache for the index (bounds index memory).
    pub index_cache_bytes: u64,
    /// Pack files kept open for reading.
    pub max_open_packs: usize,
    /// zstd level for chunk compression.
    pub zstd_level: i32,
    /// Chunks written but not yet durable before a writer commits on its own,
    /// bounding the memory of not-yet-indexed chunks.
    pub max_pending_chunks: usize,
    /// GC rewrites a pack once this share of its bytes is dead (0.0..=1.0).
    pub gc_compact_dead_share: f64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            chunk_cache_bytes: 128 << 20,
            index_cache_bytes: 64 << 20,
            max_open_packs: 256,
            zstd_level: 1,
            max_pending_chunks: 65_536,
            gc_compact_dead_share: 0.3,
        }
    }
}
