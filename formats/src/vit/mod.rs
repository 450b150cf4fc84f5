//! The ViT architectures both phases read checkpoints of, described once: the built-in teacher
//! and student presets and architecture files ([`arch`]), checkpoints with timm/MAE tensor names ([`checkpoint`]) and
//! what every tensor name of such a checkpoint is ([`tensors`]).
//!
//! `extract teacher` (the ONNX export) and `train --teacher` (the online teacher) open a
//! checkpoint with [`Checkpoint::open`], resolve its architecture with [`VitArch::resolve`] and
//! check it with [`VitArch::check`], which uses the tensors the model has, lists the ones it
//! may ignore (MAE's decoder, a classifier head) and refuses every other, so that a checkpoint
//! whose extra tensors change the network (LayerScale, relative position biases, register
//! tokens) is never read as another network.

pub mod arch;
pub mod checkpoint;
mod error;
pub mod tensors;

pub use arch::{
    heads_for_width, ArchFile, ArchOverrides, VitArch, STUDENT_PRESETS, TEACHER_PRESETS,
};
pub use checkpoint::Checkpoint;
pub use error::VitError;
pub use tensors::{block_tensor, TensorAccount, TensorRole};
