//! The teacher's geometry, recorded in every store, and the ONNX teacher contract.

use serde::{Deserialize, Serialize};

use crate::render::Normalization;

/// What a student must know about the teacher that produced a store's targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherGeometry {
    /// Free-form architecture name, e.g. `mae-vit-large` or `dinov2-small`.
    pub arch: String,
    /// Tokens per view N (class token included), e.g. 197 for ViT/16 at 224 px.
    pub tokens: u32,
    /// Relation heads H of the target block.
    pub heads: u32,
    /// Width D of the target block.
    pub dim: u32,
    /// Target block, 1-based (MAE ViT-L: 18).
    pub target_block: u32,
    /// Patch size in pixels.
    pub patch: u32,
    /// Input side in pixels (square input).
    pub image_size: u32,
    /// Input normalisation the teacher expects.
    pub normalization: Normalization,
}

impl TeacherGeometry {
    /// Per-head width d = D / H.
    pub fn head_dim(&self) -> u32 {
        self.dim / self.heads
    }
}

/// The ONNX teacher contract: what a teacher exported by `extract teacher` looks like, and what
/// `extract` expects of it without any config. Third-party teachers are adapted to the same
/// outputs by a teacher config (`configs/teachers/*.toml`) naming their q/k/v tensors.
///
/// - Input [`contract::INPUT`]: `[B, 3, S, S]` float32, normalised pixels (batch is dynamic).
/// - Outputs, all float32:
///   [`contract::LN1`] `[B, N, D]` (the target block's LayerNorm-1 output);
///   [`contract::Q`], [`contract::K`], [`contract::V`] `[B, H, N, d]`;
///   [`contract::R_QK`], [`contract::R_VV`] `[B, H, N, N]` (softmax over the last axis).
/// - Initializers [`contract::QKV_WEIGHT`] `[3D, D]` and [`contract::QKV_BIAS`] `[3D]`: the target
///   block's qkv projection (rows: q, then k, then v), for the `ln1` encoding.
/// - `metadata_props`: [`contract::META_VERSION`] = `"1"`, [`contract::META_GEOMETRY`] = the
///   [`TeacherGeometry`] as JSON, [`contract::META_WEIGHTS`] = blake3 hex of the weights the graph
///   was exported from.
pub mod contract {
    /// Input tensor name.
    pub const INPUT: &str = "pixels";
    /// Output: the target block's normalised input, `[B, N, D]`.
    pub const LN1: &str = "ln1";
    /// Output: queries of the target block after the head split, `[B, H, N, d]`.
    pub const Q: &str = "q";
    /// Output: keys, `[B, H, N, d]`.
    pub const K: &str = "k";
    /// Output: values, `[B, H, N, d]`.
    pub const V: &str = "v";
    /// Output: relation map softmax(q·kᵀ·d^-½), `[B, H, N, N]`.
    pub const R_QK: &str = "r_qk";
    /// Output: relation map softmax(v·vᵀ·d^-½), `[B, H, N, N]`.
    pub const R_VV: &str = "r_vv";
    /// Initializer: the target block's qkv weight, `[3D, D]`.
    pub const QKV_WEIGHT: &str = "tinymim.target.qkv.weight";
    /// Initializer: the target block's qkv bias, `[3D]`.
    pub const QKV_BIAS: &str = "tinymim.target.qkv.bias";
    /// Metadata key: contract version (`"1"`).
    pub const META_VERSION: &str = "tinymim.contract";
    /// Metadata key: the teacher geometry as JSON.
    pub const META_GEOMETRY: &str = "tinymim.geometry";
    /// Metadata key: blake3 hex of the source weights.
    pub const META_WEIGHTS: &str = "tinymim.weights";
}
