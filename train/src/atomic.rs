//! The run folder's files written crash-safely, through the workspace's one atomic-write
//! module ([`tinymim_formats::atomic`]: unique temporary name, file and folder synced).

use std::path::Path;

use tinymim_formats::atomic::{replace_file, write_file, AtomicWriteError};

use crate::error::{Result, TrainError};

impl From<AtomicWriteError> for TrainError {
    fn from(e: AtomicWriteError) -> Self {
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Replaces `path` with `bytes`, atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(write_file(path, bytes)?)
}

/// Writes named tensors (and optional string metadata) as a safetensors file at `path`,
/// atomically, streaming them to disk rather than building the file in memory.
pub(crate) fn save_safetensors(
    path: &Path,
    tensors: Vec<(String, candle_core::Tensor)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    replace_file(path, |tmp| {
        safetensors::serialize_to_file(tensors, metadata, tmp).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("cannot write safetensors: {e}"),
        })
    })
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}
