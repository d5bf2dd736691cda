//! The crate's errors.

use cas::ChunkId;

/// What went wrong with a memory image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] cas::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored image node that does not decode (Invariant 1: never wrong
    /// bytes — the image is refused rather than guessed at).
    #[error("memory image node {node} is corrupt: {reason}")]
    Corrupt { node: ChunkId, reason: String },
    #[error("{0}")]
    Invalid(String),
    /// The Firecracker handshake or a fault could not be served.
    #[error("page server: {0}")]
    Serve(String),
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
