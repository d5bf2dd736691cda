//! Store statistics: what is stored, how much space it takes.

use crate::error::{Error, Result};
use crate::frame::FRAME_HEADER_LEN;
use crate::id::ChunkKind;
use crate::pack;
use crate::store::Store;

/// Counts and sizes of a store, from one pass over the index.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreStats {
    /// Indexed chunks.
    pub chunks: u64,
    /// Of which data chunks.
    pub data_chunks: u64,
    /// Of which node chunks.
    pub node_chunks: u64,
    /// Uncompressed bytes of all indexed chunks.
    pub raw_bytes: u64,
    /// Bytes their frames take in packs (compressed, with headers).
    pub stored_bytes: u64,
    /// Pack files.
    pub packs: u64,
    /// Bytes of pack files on disk (live and dead frames, trailers).
    pub pack_bytes: u64,
    /// Named refs.
    pub refs: u64,
    /// Operations in flight holding leases (this process only).
    pub leases: u64,
}

impl StoreStats {
    /// Uncompressed over stored bytes of live chunks.
    pub fn compression_ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.stored_bytes.max(1) as f64
    }
}

impl Store {
    /// Counts chunks, bytes, packs and refs. Reads the whole index, so it
    /// takes time proportional to the number of chunks (memory stays
    /// constant).
    pub fn stats(&self) -> Result<StoreStats> {
        self.commit()?;
        let mut stats = StoreStats::default();
        self.index().for_each_chunk(|_, location| {
            let location = location?;
            stats.chunks += 1;
            match location.kind {
                ChunkKind::Data => stats.data_chunks += 1,
                ChunkKind::Node => stats.node_chunks += 1,
            }
            stats.raw_bytes += u64::from(location.raw_len);
            stats.stored_bytes += FRAME_HEADER_LEN as u64 + u64::from(location.stored_len);
            Ok(true)
        })?;
        for id in pack::list_packs(self.packs_dir())? {
            stats.packs += 1;
            let path = pack::pack_path(self.packs_dir(), id);
            stats.pack_bytes += std::fs::metadata(&path)
                .map_err(|e| Error::io(format!("reading pack {id}"), e))?
                .len();
        }
        stats.refs = self.list_refs("")?.len() as u64;
        stats.leases = self.leases().len() as u64;
        Ok(stats)
    }
}
