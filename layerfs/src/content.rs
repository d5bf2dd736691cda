//! What a file's content id names: a `cas` blob (every file an import or a
//! snapshot stores), or a memory image (`memsnap`), which a mount of a
//! memory snapshot shows as a file of the image's size whose pages are
//! read from the image as they are asked for — so a VM can map a restored
//! memory file shared and fault its pages in through the mount.

use std::sync::Arc;

use cas::{Blob, ChunkId, Store};
use memsnap::ImageReader;

use crate::error::Result;

/// Decoded chunks kept per open memory file.
const MEMORY_CACHE_BYTES: u64 = 32 << 20;

/// An opened file content.
#[derive(Clone)]
pub enum Content {
    Blob(Blob),
    Memory(Arc<ImageReader>),
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Blob(b) => write!(f, "Blob({})", b.id()),
            Content::Memory(m) => write!(f, "Memory({})", m.index().id),
        }
    }
}

impl Content {
    /// Opens content `id`: a blob, else a memory image; any other node is
    /// the blob's error.
    pub fn open(store: &Store, id: &ChunkId) -> Result<Content> {
        match store.blob(id) {
            Ok(blob) => Ok(Content::Blob(blob)),
            Err(blob_error) => {
                match memsnap::root_kind(store, id) {
                    Ok(memsnap::RootKind::Image) => Ok(Content::Memory(Arc::new(
                        ImageReader::open(store, id, MEMORY_CACHE_BYTES)?,
                    ))),
                    _ => Err(blob_error.into()),
                }
            }
        }
    }

    /// Bytes of content.
    pub fn len(&self) -> u64 {
        match self {
            Content::Blob(b) => b.len(),
            Content::Memory(m) => m.size(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads from `offset` into `buf`; the count read (0 at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_at_noting(offset, buf, None)
    }

    /// [`Content::read_at`]; with `loaded`, adds to it the chunks of a blob
    /// this call read from their packs (see [`cas::Blob::read_at_noting`]).
    pub fn read_at_noting(
        &self,
        offset: u64,
        buf: &mut [u8],
        loaded: Option<&mut Vec<(u64, ChunkId)>>,
    ) -> Result<usize> {
        match self {
            Content::Blob(b) => Ok(b.read_at_noting(offset, buf, loaded)?),
            Content::Memory(m) => Ok(m.read_at(offset, buf)?),
        }
    }
}
