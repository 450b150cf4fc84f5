//! Why a teacher could not be exported. Every variant names the file, tensor or field at fault.

use std::path::PathBuf;

/// An export failure, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint or its architecture is unusable.
    #[error(transparent)]
    Vit(#[from] tinymim_formats::vit::VitError),
    /// The ONNX model is too large for a single protobuf file.
    #[error(
        "the exported model would be {bytes} bytes, over protobuf's 2 GiB limit; \
         use --dtype float16 or an earlier --block"
    )]
    TooLarge {
        /// Serialised size in bytes.
        bytes: u64,
    },
    /// Writing the ONNX file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl From<tinymim_formats::atomic::AtomicWriteError> for ExportError {
    fn from(e: tinymim_formats::atomic::AtomicWriteError) -> Self {
        ExportError::Write {
            path: e.path,
            source: e.source,
        }
    }
}
