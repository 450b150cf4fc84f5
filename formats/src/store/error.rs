//! Why a store could not be opened, written or read.

use std::path::PathBuf;

/// Everything that can go wrong with a relation store. Every variant names the store path,
/// segment, array or field involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The path holds no tinymim relation store (missing or foreign root `zarr.json`).
    #[error("{path}: not a tinymim relation store: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    /// The store was written for something else than the caller's header.
    #[error("store and writer disagree on {what}: the store has {store}, the writer has {writer}")]
    Mismatch {
        what: &'static str,
        store: String,
        writer: String,
    },
    /// The store (or a row) uses the `ln1` encoding but no qkv weight and bias are available.
    #[error("the ln1 encoding needs the target block's qkv weight and bias, and none were given")]
    MissingQkvParams,
    /// A tensor or parameter has the wrong number of values.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    /// A row index past the end of the store.
    #[error("row {index} is out of range: the store has {len} rows")]
    RowOutOfRange { index: usize, len: usize },
    /// A segment writer was given more rows than the capacity it was begun with.
    #[error("segment {segment}: capacity of {capacity} rows exceeded")]
    CapacityExceeded { segment: String, capacity: u64 },
    /// Well-formed Zarr whose content breaks the tinymim layout or contract.
    #[error("{path}: corrupt store: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// zarrs failed on an array or group (checksum mismatches land here too).
    #[error("{path}: {source}")]
    Zarr {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Wraps any zarrs error with the path of the node it concerns.
    pub(crate) fn zarr(
        path: impl Into<PathBuf>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Zarr {
            path: path.into(),
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
