//! `remote`: Strata's object-storage tier.
//!
//! Many nodes share one bucket (S3, GCS, Azure Blob, or a local directory,
//! through the `object_store` crate) with no coordination service: each
//! node's store keeps what it writes and fetches what it lacks.
//!
//! - **Packs** are the local store's pack format, assembled from the frames
//!   a push needs and uploaded whole (in parallel, multipart when large).
//! - **Index objects** list each push's packs and frames; a node reads the
//!   ones it has not seen to know where every chunk is.
//! - **Refs** are sequences of create-only version objects, so an update
//!   is a conditional write every backend supports, and a lost race is
//!   reported instead of overwriting ([`refs`]).
//! - **Reads**: a store with the tier attached ([`Remote::attach`]) looks
//!   up chunks it lacks here and fetches their frames with ranged GETs of
//!   whole 4 MiB blocks, reading ahead, into a bounded disk cache that
//!   can be wiped at any time. Every fetched frame is verified by the
//!   store like a local one.
//!
//! The bucket's layout and write order are in `cas/FORMAT.md`.

mod bucket;
mod cache;
mod config;
mod error;
mod gc;
mod index;
mod layout;
mod push;
pub mod refs;
pub mod shaped;
mod tier;

pub use bucket::{Bucket, RequestCounts};
pub use cache::BLOCK_BYTES;
pub use config::{memory_bucket, RemoteConfig, CONFIG_FILE};
pub use error::{Error, Result};
pub use gc::RemoteGcReport;
pub use push::{PushReport, PIN_PREFIX};
pub use refs::RemoteRef;
pub use tier::{Remote, BUCKET_VERSION};
