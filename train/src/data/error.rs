//! Why the training data (rows, source images, targets) could not be prepared.

use std::path::PathBuf;

use tinymim_formats::{Hash32, RenderError, StoreError};

/// Everything that can go wrong on the data path. Every variant names the file, image or
/// store involved, so the message alone says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The relation store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An image folder could not be listed.
    #[error(transparent)]
    Walk(#[from] tinymim_formats::images::WalkError),
    /// The relation heads asked for cannot be formed from the store's targets.
    #[error("--relation-heads: {0}")]
    RelationHeads(String),
    /// A source image could not be decoded or rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The store holds no committed row to train on.
    #[error("{store}: the store has no committed rows; run `extract` into it first")]
    EmptyStore {
        /// The store folder.
        store: PathBuf,
    },
    /// An image folder holds no image file.
    #[error("{folder}: no images found (.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff)")]
    NoImages {
        /// The folder searched.
        folder: PathBuf,
    },
    /// A row's image hash is missing from the store's image table.
    #[error("image {image} of a row is not in the store's image table (corrupt store?)")]
    UnknownImage {
        /// The image hash.
        image: Hash32,
    },
    /// A source image listed in the store is missing or has another size than recorded.
    #[error("source image {path} (blake3 {image}): {reason}; pass the folder extract read with --images")]
    MissingImage {
        /// The file the store's image table points to.
        path: PathBuf,
        /// Its hash in the store.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A source image's bytes changed since `extract` hashed them.
    #[error("source image {path} changed since extraction: its blake3 is {actual}, the store recorded {expected}")]
    ChangedImage {
        /// The file.
        path: PathBuf,
        /// The hash the store recorded.
        expected: String,
        /// The hash of the bytes on disk now.
        actual: String,
    },
    /// Reading a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model refused a tensor (shape or dtype) while computing targets.
    #[error(transparent)]
    Model(#[from] crate::error::TrainError),
    /// A tensor operation failed while decoding targets (a bug or an exhausted device).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the data path.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// An I/O error naming its path.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
