//! Multi-head self-attention with a fused qkv projection (timm's `Attention`).

use candle_core::{Tensor, D};

use super::fused;
use super::layers::Linear;
use super::params::ParamBuilder;
use crate::error::Result;
use crate::precision::Precision;

/// Queries, keys and values after the head split, each `[B, H, N, d]`.
#[derive(Clone, Debug)]
pub struct HeadsQkv {
    /// Queries.
    pub q: Tensor,
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

impl HeadsQkv {
    /// d^-½, the scale of every product of two of these tensors.
    fn scale(&self) -> Result<f64> {
        Ok((self.q.dim(D::Minus1)? as f64).powf(-0.5))
    }

    /// The relation logits q·kᵀ·d^-½ and v·vᵀ·d^-½, each `[B, H, N, N]` (TINYMIM.md,
    /// "Relation maps"; the scale multiplies after the product).
    pub fn relation_logits(&self) -> Result<(Tensor, Tensor)> {
        let scale = self.scale()?;
        let qk = fused::scaled_products_nt(&self.q, &self.k, scale)?;
        let vv = fused::scaled_products_nt(&self.v, &self.v, scale)?;
        Ok((qk, vv))
    }
}

/// Self-attention of one block: `qkv` (D → 3D, rows q, k, v) and `proj` (D → D).
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    precision: Precision,
}

impl Attention {
    /// `{prefix}.qkv` and `{prefix}.proj` for `heads` heads of width `dim / heads`.
    pub(crate) fn new(
        pb: &mut ParamBuilder,
        prefix: &str,
        dim: usize,
        heads: usize,
    ) -> Result<Self> {
        Ok(Attention {
            qkv: Linear::new(pb, &format!("{prefix}.qkv"), dim, 3 * dim)?,
            proj: Linear::new(pb, &format!("{prefix}.proj"), dim, dim)?,
            heads,
            precision: Precision::F32,
        })
    }

    /// Runs the projections and the attention products in `precision` (the softmax stays
    /// f32).
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.qkv.set_precision(precision);
        self.proj.set_precision(precision);
    }

    /// Projects normalised tokens `[B, N, D]` to q, k, v split into heads: head h takes
    /// channels `[h·d, (h+1)·d)` of each of q, k and v.
    pub fn qkv(&self, x: &Tensor) -> Result<HeadsQkv> {
        let (b, n, dim) = x.dims3()?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(self
                .qkv
                .forward_outputs(x, i * dim, dim)?
                .reshape((b, n, self.heads, dim / self.heads))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        Ok(HeadsQkv {
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
        })
    }

    /// proj(softmax(q·kᵀ·d^-½)·v) with the heads merged back, `[B, N, D]`. In f32 the
    /// projection's output goes to [`fused::attention`] as it is; in reduced precision the
    /// products run in it, around the f32 softmax.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = x.dims3()?;
        let d = dim / self.heads;
        let out = if self.precision == Precision::F32 {
            fused::attention(&self.qkv.forward(x)?, self.heads, (d as f64).powf(-0.5))?
        } else {
            let heads = self.qkv(x)?;
            let logits = self.precision.matmul(&heads.q, &heads.k.t()?)?;
            let attn = fused::softmax_last_dim(&logits, heads.scale()?)?;
            self.precision
                .matmul(&attn, &heads.v)?
                .transpose(1, 2)?
                .reshape((b, n, dim))?
        };
        self.proj.forward(&out)
    }
}
