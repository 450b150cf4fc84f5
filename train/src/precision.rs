//! Mixed precision: the dtype the student's matrix products run in.
//!
//! `bf16` works like PyTorch's `torch.autocast(dtype=torch.bfloat16)` for the products: both
//! operands are cast to bfloat16, the product is computed there (tensor cores on a GPU) and
//! cast back to float32. Everything else stays float32: the parameters and AdamW moments
//! (master weights), LayerNorm, softmax, GELU, the patch embedding and the relation loss.
//! Gradients flow through the casts (candle differentiates `to_dtype`), so the step is the same
//! code in both precisions.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Precision of the student's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Float32 throughout.
    #[default]
    F32,
    /// Products in bfloat16 (autocast-style), everything else float32.
    Bf16,
    /// Float32 operands with TF32 tensor-core products on CUDA (PyTorch's `allow_tf32`); the
    /// same as [`Precision::F32`] on the CPU. Set by [`crate::device::configure_gemm`].
    Tf32,
}

impl Precision {
    /// TinyMIM's choice for a device: bfloat16 products on CUDA, float32 on the CPU (where
    /// candle's bfloat16 products are slower than its float32 ones).
    pub fn default_for(device: &Device) -> Precision {
        if device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// The dtype products run in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Tf32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// `a · b` (candle's batched `matmul`, broadcasting as `broadcast_matmul` does) computed
    /// in this precision, returned as float32.
    pub fn matmul(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Precision::F32 | Precision::Tf32 => a.broadcast_matmul(b)?,
            Precision::Bf16 => a
                .to_dtype(DType::BF16)?
                .broadcast_matmul(&b.to_dtype(DType::BF16)?)?
                .to_dtype(DType::F32)?,
        })
    }
}
