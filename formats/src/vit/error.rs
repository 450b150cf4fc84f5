//! Why a ViT checkpoint or architecture could not be used. Every variant names the file, tensor
//! or field at fault.

use std::path::PathBuf;

/// A checkpoint or architecture failure, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum VitError {
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
    /// A tensor the model needs is absent.
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
    /// The checkpoint holds tensors of a network other than the plain ViT described here.
    #[error(
        "checkpoint {path}: {count} tensor(s) are not part of a plain ViT (timm/MAE names) and \
         would change the network if they were ignored: {names}; LayerScale, relative position \
         biases, separate q/v biases, register or distillation tokens are not supported",
        names = names.join(", ")
    )]
    UnknownTensors {
        /// The checkpoint file.
        path: PathBuf,
        /// How many there are.
        count: usize,
        /// The first of them, sorted (at most 8).
        names: Vec<String>,
    },
    /// An architecture file (preset TOML or config.json) could not be read or parsed.
    #[error("architecture file {path}: {reason}")]
    ArchFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A preset name is not built in.
    #[error("unknown preset `{name}`; built-in presets: {known}")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The built-in preset names, comma-separated.
        known: String,
    },
    /// An architecture field was given nowhere and cannot be read off the checkpoint.
    #[error(
        "architecture field `{field}` is set by no flag, preset or config file and cannot be \
         read off the checkpoint; set it with a flag, a preset or a config file"
    )]
    MissingField {
        /// The field name in preset files.
        field: &'static str,
    },
    /// Architecture fields contradict each other (e.g. dim not divisible by heads).
    #[error("invalid architecture: {0}")]
    InvalidArch(String),
}
