//! Why a teacher could not be exported. Every variant names the file, tensor or field at fault.

use std::path::PathBuf;

/// An export failure, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The checkpoint file could not be read or parsed.
    #[error("cannot read checkpoint {path}: {reason}")]
    CheckpointUnreadable {
        /// The checkpoint file.
        path: PathBuf,
        /// What the reader reported.
        reason: String,
    },
    /// The checkpoint's extension is neither `.pth`/`.pt`/`.bin` nor `.safetensors`.
    #[error(
        "checkpoint {path}: unknown format; expected a PyTorch .pth (or .pt, .bin) or a \
         .safetensors file"
    )]
    CheckpointFormat {
        /// The checkpoint file.
        path: PathBuf,
    },
    /// A `.pth` holds neither a state dict nor a dict with one under `model`.
    #[error("checkpoint {path}: no tensors found (expected a state dict, or a dict with one under `model` as MAE ships it)")]
    NoTensors {
        /// The checkpoint file.
        path: PathBuf,
    },
    /// A tensor the teacher needs is absent.
    #[error("checkpoint {path}: tensor `{tensor}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The timm/MAE name of the tensor.
        tensor: String,
        /// The shape the architecture implies.
        expected: Vec<usize>,
    },
    /// A tensor's shape disagrees with the architecture.
    #[error("checkpoint {path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} for {arch}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The timm/MAE name of the tensor.
        tensor: String,
        /// The shape the architecture implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
        /// The architecture, summarised (`dim=…, depth=…, …`).
        arch: String,
    },
    /// The checkpoint has a different number of blocks than the architecture says.
    #[error("checkpoint {path}: has {found} blocks (blocks.0 … blocks.{last}), but the architecture says depth = {expected}", last = found.saturating_sub(1))]
    DepthMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The architecture's depth.
        expected: usize,
        /// Blocks present in the checkpoint.
        found: usize,
    },
    /// An architecture file (preset TOML or config.json) could not be read or parsed.
    #[error("architecture file {path}: {reason}")]
    ArchFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// `--preset` names no built-in preset.
    #[error("unknown preset `{name}`; built-in presets: {known}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The built-in preset names, comma-separated.
        known: String,
    },
    /// An architecture field was given nowhere.
    #[error("architecture field `{field}` is not set: pass --{flag}, or --preset / --config")]
    MissingField {
        /// The field name in preset files.
        field: &'static str,
        /// The command-line flag that sets it.
        flag: &'static str,
    },
    /// Architecture fields contradict each other (e.g. dim not divisible by heads).
    #[error("invalid architecture: {0}")]
    InvalidArch(String),
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
