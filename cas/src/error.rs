//! The one error type of the `cas` crate.

use std::path::PathBuf;

use crate::id::{ChunkId, ChunkKind};
use crate::pack::PackId;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the chunk store. Variants name the thing
/// that went wrong so callers (and `snapctl`) can tell failure kinds apart;
/// see [`Error::class`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds no store (no marker file).
    #[error("no store at {path}: run `snapctl store init` to create one, or point --home / STRATA_HOME at an existing store")]
    NotAStore { path: PathBuf },

    /// `init` was asked to create a store where one (or other files) exist.
    #[error("cannot create a store at {path}: {reason}")]
    AlreadyExists { path: PathBuf, reason: String },

    /// Another process has the store open.
    #[error("the store at {path} is in use by another process (a daemon or another snapctl); stop it or wait for it to finish")]
    Locked { path: PathBuf },

    /// The store was written by a newer or unknown format version.
    #[error("the store at {path} has format version {found}; this build understands version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The store's configuration is invalid.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),

    /// An operating-system I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The RocksDB index failed.
    #[error("index database error while {context}: {source}")]
    Index {
        context: String,
        #[source]
        source: rocksdb::Error,
    },

    /// The RocksDB index holds damaged data.
    #[error("the chunk index is damaged ({detail}); run `snapctl store fsck --rebuild-index` to rebuild it from the packs")]
    IndexCorrupt { detail: String },

    /// No chunk with this id is in the store.
    #[error("chunk {id} is not in the store")]
    ChunkNotFound { id: ChunkId },

    /// A chunk's stored bytes do not verify. Never returned as data.
    #[error("chunk {id} is corrupt in pack {pack} at offset {offset}: {reason}; run `snapctl store fsck` for a full report")]
    CorruptChunk {
        id: ChunkId,
        pack: PackId,
        offset: u64,
        reason: String,
    },

    /// A pack file is damaged outside any single chunk (header, trailer).
    #[error("pack {pack} is damaged at offset {offset}: {reason}")]
    CorruptPack {
        pack: PackId,
        offset: u64,
        reason: String,
    },

    /// The index points at a pack file that does not exist.
    #[error("chunk {id} is indexed in pack {pack}, but that pack file is missing")]
    PackMissing { id: ChunkId, pack: PackId },

    /// A chunk exists but is not of the kind the caller needs.
    #[error("{id} is a {found} chunk, not {wanted}")]
    WrongKind {
        id: ChunkId,
        found: &'static str,
        wanted: &'static str,
    },

    /// A node chunk does not decode.
    #[error("node {id} is malformed: {reason}")]
    MalformedNode { id: ChunkId, reason: String },

    /// A node links to a chunk that is not in the store.
    #[error("node {node} links to chunk {link}, which is not in the store")]
    DanglingLink { node: ChunkId, link: ChunkId },

    /// A chunk larger than the store accepts.
    #[error("chunk of {len} bytes exceeds the limit of {max} bytes")]
    ChunkTooLarge { len: usize, max: usize },

    /// A node with more links than the store accepts.
    #[error("node with {count} links exceeds the limit of {max}")]
    TooManyLinks { count: usize, max: usize },

    /// Text that should be a chunk id is not.
    #[error("'{text}' is not a chunk id: {reason}")]
    InvalidId { text: String, reason: String },

    /// A ref name breaks the naming rules.
    #[error("invalid ref name '{name}': {reason}")]
    InvalidRefName { name: String, reason: String },

    /// No ref with this name.
    #[error("ref '{name}' does not exist")]
    RefNotFound { name: String },

    /// A compare-and-swap on a ref found a different value.
    #[error("ref '{name}' was changed concurrently: expected {expected}, found {found}")]
    RefConflict {
        name: String,
        expected: String,
        found: String,
    },

    /// An earlier durability failure (fsync) left the write side unusable;
    /// reopening the store recovers.
    #[error("the store stopped accepting writes after a durability failure ({0}); reopen it")]
    WritesFailed(String),

    /// The remote tier failed to answer (network, bucket, credentials).
    #[error("remote store: {context}: {detail}")]
    Remote { context: String, detail: String },

    /// An internal invariant does not hold. Stops loudly instead of
    /// continuing on bad state.
    #[error("internal invariant broken: {0}")]
    Invariant(String),
}

/// Broad failure classes, for exit codes and retry decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The caller asked for something that does not exist (id, ref).
    NotFound,
    /// The caller's input is invalid (bad id text, ref name, conflict).
    InvalidInput,
    /// The store is missing, locked, or of another version.
    StoreUnavailable,
    /// Stored data failed verification.
    Corruption,
    /// The operating system failed an operation (disk, permissions).
    Io,
    /// Anything else.
    Internal,
}

impl Error {
    /// The broad class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::ChunkNotFound { .. } | Error::RefNotFound { .. } => ErrorClass::NotFound,
            Error::InvalidId { .. }
            | Error::InvalidRefName { .. }
            | Error::RefConflict { .. }
            | Error::WrongKind { .. }
            | Error::ChunkTooLarge { .. }
            | Error::TooManyLinks { .. }
            | Error::DanglingLink { .. }
            | Error::InvalidConfig(_) => ErrorClass::InvalidInput,
            Error::NotAStore { .. }
            | Error::AlreadyExists { .. }
            | Error::Locked { .. }
            | Error::UnsupportedVersion { .. } => ErrorClass::StoreUnavailable,
            Error::CorruptChunk { .. }
            | Error::CorruptPack { .. }
            | Error::PackMissing { .. }
            | Error::IndexCorrupt { .. }
            | Error::MalformedNode { .. } => ErrorClass::Corruption,
            Error::Io { .. } | Error::WritesFailed(_) | Error::Remote { .. } => ErrorClass::Io,
            Error::Index { .. } | Error::Invariant(_) => ErrorClass::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn index(context: impl Into<String>, source: rocksdb::Error) -> Error {
        if source.kind() == rocksdb::ErrorKind::Corruption {
            return Error::IndexCorrupt {
                detail: format!("{}: {}", context.into(), source),
            };
        }
        Error::Index {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn wrong_kind(id: ChunkId, found: ChunkKind, wanted: &'static str) -> Error {
        Error::WrongKind {
            id,
            found: found.name(),
            wanted,
        }
    }
}
