//! Memory snapshots for Strata: a sandbox's memory image stored in the
//! chunk store by page class, and given back eagerly or lazily.
//!
//! The idea: most of a memory image is zero pages or pages its parent
//! snapshot already holds. A capture hashes each page, stores nothing for
//! a zero page, a reference for a page equal to the parent's at the same
//! offset (found through the parent's stored page hashes, never its
//! data), and packs the remaining *new* pages of each fixed-size cell into
//! one compressed, deduplicated chunk ([`capture`]). A restore writes a
//! sparse file ([`restore`]); a [`server::PageServer`] serves the pages
//! on fault to processes that registered their memory with userfaultfd,
//! speaking Firecracker's handshake.
//!
//! This crate knows nothing of snapshot records, names or daemons; the
//! snapshotter catalogues what it stores.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = cas::Store::init(&dir.path().join("store"), Default::default())?;
//! let image = dir.path().join("ram");
//! let mut ram = vec![0u8; 1 << 20];
//! ram[4096..8192].fill(7);
//! std::fs::write(&image, &ram)?;
//!
//! let writer = store.writer("example");
//! let stored = memsnap::capture::capture_file(&writer, &std::fs::File::open(&image)?, None)?;
//! writer.commit()?;
//! assert_eq!(stored.stats.pages.new, 1);
//!
//! let back = dir.path().join("back");
//! memsnap::restore::restore(&store, &stored.id, &back)?;
//! assert_eq!(std::fs::read(&back)?, ram);
//! # Ok(()) }
//! ```

pub mod capture;
pub mod error;
pub mod image;
pub mod restore;

pub use capture::{capture_dir, capture_file, Captured};
pub use error::{Error, Result};
pub use image::{CaptureStats, ImageIndex, PageCounts, PAGE_SIZE};
pub use restore::{restore, root_kind, ImageReader, RestoreStats, RootKind};
pub mod client;
pub mod handshake;
pub mod server;
pub mod sockets;

pub use server::{PageServer, ServeOptions};
pub use sockets::PeerCred;
