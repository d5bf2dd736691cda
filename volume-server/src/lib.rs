//! `volume-server`: named persistent volumes that sandboxes share.
//!
//! A volume is a chain of commits in the chunk store; its head is a tree.
//! A sandbox works in a session — a copy-on-write mount over the head it
//! started from — and a commit merges the session's changes into whatever
//! the head is by then ([`layerfs::merge_trees`]: changes to different
//! paths all land, a conflict keeps both versions and is listed), moving
//! the head by compare-and-swap so that no concurrent commit is lost.
//!
//! - [`access`]: reading and changing paths from outside the sandboxes,
//!   each change a commit of its own.
//! - [`catalog`]: volumes, their heads, commits, history and retention.
//! - [`remote_sync`]: volumes kept in step with a bucket other nodes
//!   share, their heads moved there by conditional writes.
//! - [`session`]: one sandbox's copy-on-write view of a volume and its
//!   commits.
//! - [`server`]: the `volume-server` daemon: sessions over FUSE and 9P,
//!   committed in the background and at teardown, and its API.

pub mod access;
pub mod catalog;
pub mod remote_sync;
pub mod server;
pub mod session;

pub use access::FileEntry;
pub use session::Session;

pub use catalog::{
    validate_name, Commit, CommitKind, CommitRecord, Committed, Head, Volumes, KEEP_COMMITS,
};

/// What can go wrong with volumes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no volume named '{0}'")]
    NotFound(String),
    #[error("a volume named '{0}' exists already")]
    Exists(String),
    #[error(
        "bad volume name '{0}': 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadName(String),
    #[error("volume '{0}': its head kept moving; the commit gave up after 1,000 merges")]
    Contended(String),
    #[error("volume '{0}' has no commit {1} (or it is no longer kept)")]
    NoSuchCommit(String, u64),
    #[error("volume '{volume}' is full: {needed} more bytes do not fit in the {free} its quota has left")]
    QuotaExceeded {
        volume: String,
        needed: u64,
        free: u64,
    },
    #[error("no such path in the volume: '{0}'")]
    NoSuchPath(String),
    #[error("not a file: '{0}'")]
    NotAFile(String),
    #[error("bad session id '{0}'")]
    BadSession(String),
    #[error("session: {0}")]
    Session(String),
    #[error("volume '{0}' is not kept in step with the bucket: `snapctl push volume {0}` or `snapctl pull volume {0}` first")]
    NotTracked(String),
    #[error("volume '{0}' was removed from the bucket by another node; remove it here (`snapctl volume rm {0}`) or keep it as a new volume under another name")]
    RemovedRemotely(String),
    #[error("the bucket has no volume named '{0}'")]
    NotInBucket(String),
    #[error("volume '{0}' exists here and in the bucket with separate histories: rename one of them (get its files out with `snapctl volume get`) before syncing")]
    Diverged(String),
    #[error(
        "the volume server has no bucket: start it with --remote URL or write HOME/remote.json"
    )]
    NoBucket,
    #[error(transparent)]
    Remote(#[from] remote::Error),
    #[error("volume store is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] cas::Error),
    #[error(transparent)]
    Tree(#[from] layerfs::Error),
}

/// A volume operation's result.
pub type Result<T> = std::result::Result<T, Error>;
