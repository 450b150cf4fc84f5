//! Crash-safe file writes: a temp file in the same folder, synced, then renamed into place.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// Replaces `path` so that readers see either the old file or the complete new one, never a
/// torn write: `write` fills `.<name>.tmp` beside it, which is then synced and renamed.
pub(crate) fn replace_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("not a file path")))?;
    let tmp: PathBuf = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    write(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// [`replace_atomically`] with the given bytes.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|source| TrainError::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })
}

/// Writes named tensors (and optional string metadata) as a safetensors file at `path`,
/// atomically, streaming them to disk rather than building the file in memory.
pub(crate) fn save_safetensors(
    path: &Path,
    tensors: Vec<(String, candle_core::Tensor)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    replace_atomically(path, |tmp| {
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
