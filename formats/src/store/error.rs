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
        what: String,
        store: String,
        writer: String,
    },
    /// The store (or a row) uses an encoding of LN1(x) (`ln1`, `ln1-int8`) but no qkv weight
    /// and bias are available.
    #[error("the ln1 and ln1-int8 encodings need the target block's qkv weight and bias, and none were given")]
    MissingQkvParams,
    /// A tensor or parameter has the wrong number of values.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: String,
        expected: usize,
        got: usize,
    },
    /// A teacher geometry no relation map can have.
    #[error("teacher geometry with {tokens} tokens, {heads} heads and width {dim}: tokens and heads must be positive and heads must divide the width")]
    BadGeometry { tokens: u32, heads: u32, dim: u32 },
    /// A row index past the end of the store.
    #[error("row {index} is out of range: the store has {len} rows")]
    RowOutOfRange { index: usize, len: usize },
    /// A segment writer was given more rows than the capacity it was begun with.
    #[error("segment {segment}: capacity of {capacity} rows exceeded")]
    CapacityExceeded { segment: String, capacity: u64 },
    /// A pushed row's content key is not the key of its (teacher, block, encoding, image, view).
    #[error(
        "segment {segment}: row key {} is not the content key {expected} of image {} view {:?}",
        row.key, row.image, row.view
    )]
    WrongKey {
        segment: String,
        row: Box<crate::store::RowMeta>,
        expected: crate::Hash32,
    },
    /// A pushed row names an image that was not added to the segment's image table first.
    #[error("segment {segment}: image {image} of a pushed row is not in the image table (call add_image first)")]
    UnknownImage {
        segment: String,
        image: crate::Hash32,
    },
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
    /// An environment variable the store reads holds a value it cannot use.
    #[error("{name}={value}: {reason}")]
    Environment {
        name: &'static str,
        value: String,
        reason: String,
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
    /// Wraps any zarrs error with the node path (`/segments/…`) it concerns; the path is kept
    /// relative to the store until [`within`](Self::within) anchors it.
    pub(crate) fn zarr(node: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Zarr {
            path: node_path(node),
            source: Box::new(source),
        }
    }

    /// A [`StoreError::Corrupt`] about node path `node`.
    pub(crate) fn corrupt(node: &str, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: node_path(node),
            reason: reason.into(),
        }
    }

    /// Anchors store-relative paths at the store folder `root`, so messages name real files.
    pub(crate) fn within(self, root: &std::path::Path) -> Self {
        let anchor = |path: PathBuf| {
            if path.is_relative() {
                root.join(path)
            } else {
                path
            }
        };
        match self {
            StoreError::Zarr { path, source } => StoreError::Zarr {
                path: anchor(path),
                source,
            },
            StoreError::Corrupt { path, reason } => StoreError::Corrupt {
                path: anchor(path),
                reason,
            },
            other => other,
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

/// A zarrs node path (`/segments/x`) as a store-relative path (`segments/x`).
fn node_path(node: &str) -> PathBuf {
    PathBuf::from(node.trim_start_matches('/'))
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
