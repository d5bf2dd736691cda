//! The remote tier's errors.

use cas::ChunkId;

/// What went wrong in the remote tier.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bucket's configuration is unusable (URL, options).
    #[error("remote configuration: {0}")]
    Config(String),

    /// A request to the bucket failed (after the store's own retries).
    #[error("{context}: {source}")]
    Bucket {
        context: String,
        #[source]
        source: object_store::Error,
    },

    /// An object in the bucket is not what Strata wrote.
    #[error("object {object} in the bucket is damaged: {reason}")]
    Corrupt { object: String, reason: String },

    /// The bucket was set up by a store that chunks differently, or by a
    /// newer format.
    #[error("the bucket cannot be used with this store: {0}")]
    Incompatible(String),

    /// A conditional write found the ref changed.
    #[error("remote ref '{name}' was changed concurrently: expected {expected}, found {found}")]
    RefConflict {
        name: String,
        expected: String,
        found: String,
    },

    /// No such remote ref.
    #[error("remote ref '{name}' does not exist")]
    RefNotFound { name: String },

    /// A chunk that should be in the bucket is not listed there.
    #[error("chunk {id} is neither in the local store nor in the bucket")]
    ChunkMissing { id: ChunkId },

    /// The local store failed.
    #[error(transparent)]
    Store(#[from] cas::Error),
}

/// Results of the remote tier.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn bucket(context: impl Into<String>, source: object_store::Error) -> Error {
        Error::Bucket {
            context: context.into(),
            source,
        }
    }

    /// Whether the caller gave something that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::RefNotFound { .. }
                | Error::ChunkMissing { .. }
                | Error::Store(cas::Error::RefNotFound { .. } | cas::Error::ChunkNotFound { .. })
        )
    }
}

impl From<Error> for cas::Error {
    fn from(e: Error) -> cas::Error {
        match e {
            Error::Store(inner) => inner,
            Error::ChunkMissing { id } => cas::Error::ChunkNotFound { id },
            other => cas::Error::Remote {
                context: "fetching from the bucket".into(),
                detail: other.to_string(),
            },
        }
    }
}
