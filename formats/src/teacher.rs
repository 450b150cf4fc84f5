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
