//! `cas`: Strata's content-addressed chunk store.
//!
//! Every byte Strata keeps (image files, snapshots, memory pages, volume
//! contents) lives here as chunks named by the BLAKE3 hash of their content.
//! The one idea: **a name is a promise about the bytes**. Identical content
//! is stored once, and every read is checked against its name, so the store
//! never returns different bytes than were put — corruption is an error
//! naming the chunk and the pack, never data.
//!
//! The parts:
//! - [`ChunkId`] and [`ChunkKind`]: data chunks and [`Node`]s (chunks that
//!   link to chunks, from which blobs, trees and snapshots are built).
//! - Packs: append-only files of framed chunks (crc32, raw or zstd) ending
//!   in a trailer, so the index can be rebuilt from packs alone
//!   (`FORMAT.md` has the byte layout).
//! - A RocksDB index of chunk locations, refs and metadata, with a bounded
//!   block cache.
//! - [`Chunker`]s (FastCDC and fixed-size with zero detection) and
//!   [`Blob`]s: streams stored as extent trees, with ranged reads by search.
//! - Refs (named roots) and leases (what an operation in flight wrote),
//!   garbage collection that runs beside writers, and [`Store::fsck`].
//!
//! Durability: data, then index, then ref, each durable before the next
//! points at it; see [`Writer::commit`] and [`Writer::set_ref`].
//!
//! What it is not: a filesystem (see `layerfs`) or a remote tier (a later
//! part; the local store is designed to be its verified cache).
//!
//! ```
//! use cas::{Chunking, RefExpectation, Store, StoreConfig};
//!
//! # fn main() -> cas::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::init(dir.path(), StoreConfig::default())?;
//!
//! let writer = store.writer("example");
//! let blob = writer.write_blob(&mut &b"hello, sandbox"[..], Chunking::ContentDefined)?;
//! writer.set_ref("example/greeting", blob.id, RefExpectation::Absent)?; // durable
//!
//! let mut back = Vec::new();
//! store.blob(&blob.id)?.copy_to(&mut back)?;
//! assert_eq!(back, b"hello, sandbox");
//! # Ok(())
//! # }
//! ```

mod blob;
mod chunker;
mod config;
mod error;
mod frame;
mod fsck;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
mod id;
mod index;
mod lease;
mod node;
mod pack;
mod readahead;
mod recovery;
mod refs;
mod source;
mod stats;
mod store;

pub use blob::{Blob, BlobInfo, BlobReader, BlobWriter};
pub use chunker::{is_all_zero, Chunker, Chunking};
pub use config::{
    ChunkingConfig, OpenOptions, StoreConfig, BLOB_FANOUT, MAX_CHUNK_LEN, MAX_FRAMES_PER_PACK,
    MAX_NODE_LINKS, MAX_REF_NAME_LEN,
};
pub use error::{Error, ErrorClass, Result};
pub use frame::{check as check_frame, Codec, FrameHeader, FRAME_HEADER_LEN};
pub use fsck::{repair_index, FsckOptions, FsckReport, Problem};
pub use gc::GcReport;
pub use id::{ChunkId, ChunkKind, CHUNK_ID_LEN, NODE_HASH_KEY};
pub use index::{ChunkLocation, IndexDb, RefValue};
pub use lease::LeaseInfo;
pub use node::{Node, NodeType, VerifiedNode};
pub use pack::{
    decode_footer, decode_trailer, encode_header, Footer, PackBuilder, PackId, TrailerEntry,
    FOOTER_LEN, PACK_HEADER_LEN, TRAILER_ENTRY_LEN,
};
pub use refs::{validate_ref_name, RefExpectation};
pub use source::{ChunkSource, RemoteChunk};
pub use stats::StoreStats;
pub use store::{PutOutcome, Store, Writer, MARKER_FILE, STORE_VERSION};
