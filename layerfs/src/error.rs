//! The error type of the `layerfs` crate.

use std::path::PathBuf;

use cas::ChunkId;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong building, reading or importing trees.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The chunk store failed (its error names the chunk and pack).
    #[error(transparent)]
    Store(#[from] cas::Error),

    /// A memory image shown as a file could not be read.
    #[error(transparent)]
    Memory(#[from] memsnap::Error),

    /// A tree node does not decode; never read as a different tree.
    #[error("tree node {id} is malformed: {reason}")]
    MalformedTree { id: ChunkId, reason: String },

    /// An archive or image is unsafe or malformed. Nothing was imported.
    #[error("rejected {source_name}: {entry}: {reason}")]
    Rejected {
        /// The archive or layer being read.
        source_name: String,
        /// The entry (path) at fault, or `-` for the archive as a whole.
        entry: String,
        reason: String,
    },

    /// An import exceeded a configured limit. Nothing was imported.
    #[error("{source_name}: {what} exceeds the limit of {limit} ({hint})")]
    LimitExceeded {
        source_name: String,
        what: String,
        limit: u64,
        hint: &'static str,
    },

    /// An image layout or manifest is not what the import understands.
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },

    /// No image with this name.
    #[error("no image named '{name}'; `snapctl image ls` lists the images")]
    ImageNotFound { name: String },

    /// An image with this name already exists.
    #[error("an image named '{name}' already exists; remove it first or choose another name")]
    ImageExists { name: String },

    /// A path inside a tree does not exist or is not what was asked.
    #[error("{path}: {reason}")]
    BadPath { path: String, reason: String },

    /// An operating-system I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(id: ChunkId, reason: impl Into<String>) -> Error {
        Error::MalformedTree {
            id,
            reason: reason.into(),
        }
    }

    /// The broad class of this error, shared with `cas` for exit codes.
    pub fn class(&self) -> cas::ErrorClass {
        use cas::ErrorClass;
        match self {
            Error::Store(e) => e.class(),
            Error::Memory(memsnap::Error::Store(e)) => e.class(),
            Error::Memory(memsnap::Error::Corrupt { .. }) => ErrorClass::Corruption,
            Error::Memory(memsnap::Error::Invalid(_)) => ErrorClass::InvalidInput,
            Error::Memory(_) => ErrorClass::Io,
            Error::MalformedTree { .. } => ErrorClass::Corruption,
            Error::Rejected { .. }
            | Error::LimitExceeded { .. }
            | Error::BadImage { .. }
            | Error::ImageExists { .. }
            | Error::BadPath { .. } => ErrorClass::InvalidInput,
            Error::ImageNotFound { .. } => ErrorClass::NotFound,
            Error::Io { .. } => ErrorClass::Io,
        }
    }
}
