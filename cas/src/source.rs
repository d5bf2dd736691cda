//! Where chunks missing from the local store come from: the remote tier.
//!
//! A store may have one [`ChunkSource`] attached (the `remote` crate's
//! bucket tier). A chunk the local index does not hold is then looked up in
//! the source; [`Store::locate`](crate::Store::locate) reports it at
//! [`PackId::REMOTE`], and reads fetch its frame from the source and verify
//! it exactly like a frame read from a local pack (crc32, decoding, BLAKE3
//! of the content against the id, kind). A source is trusted for nothing
//! but availability: wrong bytes are a [`Error::CorruptChunk`], never data.
//!
//! A remote chunk's closure is remote too (a push uploads every chunk a
//! node reaches before it publishes the node), so garbage collection and
//! fsck do not descend into remote nodes.

use crate::error::Result;
use crate::id::{ChunkId, ChunkKind};

/// What a source knows about a chunk without fetching it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteChunk {
    pub kind: ChunkKind,
    /// Bytes once decoded.
    pub raw_len: u32,
    /// Payload bytes after the frame header.
    pub stored_len: u32,
}

/// A place to fetch chunks the local store does not hold.
pub trait ChunkSource: Send + Sync {
    /// Whether the source holds chunk `id`, from what it already knows (it
    /// may refresh its listing, but must not fetch the chunk).
    fn lookup(&self, id: &ChunkId) -> Result<Option<RemoteChunk>>;

    /// The frame of chunk `id` (header and payload, exactly as in a pack),
    /// which the store then verifies.
    fn fetch_frame(&self, id: &ChunkId) -> Result<Vec<u8>>;
}
