//! Linear, LayerNorm and MLP built from primitive tensor ops and the fused kernels of
//! [`super::fused`], so every parameter keeps its gradient (candle's fused `layer_norm` ops
//! lose them; see DEPENDENCIES.md).

use candle_core::Tensor;

use super::fused;
use super::params::ParamBuilder;
use crate::error::Result;
use crate::precision::Precision;

/// LayerNorm epsilon of every norm in the model (TINYMIM.md: 1e-6, not 1e-5).
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// `y = x Wᵀ + b` on the last axis, W `[out, in]` as in PyTorch.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    precision: Precision,
}

impl Linear {
    /// A xavier-uniform weight and a zero bias named `{prefix}.weight`, `{prefix}.bias`.
    pub(crate) fn new(pb: &mut ParamBuilder, prefix: &str, inp: usize, out: usize) -> Result<Self> {
        Ok(Linear {
            weight: pb.xavier_uniform(&format!("{prefix}.weight"), &[out, inp])?,
            bias: pb.constant(&format!("{prefix}.bias"), &[out], 0.0)?,
            precision: Precision::F32,
        })
    }

    /// Runs the product `x Wᵀ` in `precision` from now on (the bias add stays f32).
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Applies the layer to `[..., in]`, returning `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_outputs(x, 0, self.weight.dim(0)?)
    }

    /// Only outputs `[start, start + len)` of the layer, `[..., len]`: one part of a fused
    /// projection (the q, k or v of `qkv`), without computing the others. Slicing the
    /// parameters rather than the output keeps the backward from padding the gradient of
    /// each part with zeros to the full output width.
    pub fn forward_outputs(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let inp = dims.pop().unwrap_or(1);
        let rows = x.elem_count() / inp.max(1);
        let (weight, bias) = if start == 0 && len == self.weight.dim(0)? {
            (self.weight.clone(), self.bias.clone())
        } else {
            (
                self.weight.narrow(0, start, len)?,
                self.bias.narrow(0, start, len)?,
            )
        };
        let x = x.reshape((rows, inp))?;
        let y = match self.precision {
            Precision::Bf16 => fused::add_bias(&self.precision.matmul(&x, &weight.t()?)?, &bias)?,
            Precision::F32 | Precision::Tf32 => fused::linear(&x, &weight, &bias)?,
        };
        dims.push(len);
        Ok(y.reshape(dims)?)
    }
}

/// LayerNorm over the last axis with learned scale and shift, eps [`LAYER_NORM_EPS`].
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// Weight 1 and bias 0 named `{prefix}.weight`, `{prefix}.bias`.
    pub(crate) fn new(pb: &mut ParamBuilder, prefix: &str, dim: usize) -> Result<Self> {
        Ok(LayerNorm {
            weight: pb.constant(&format!("{prefix}.weight"), &[dim], 1.0)?,
            bias: pb.constant(&format!("{prefix}.bias"), &[dim], 0.0)?,
        })
    }

    /// (x − mean) / √(var + eps) · weight + bias, with the biased variance as in PyTorch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(fused::layer_norm(
            x,
            &self.weight,
            &self.bias,
            LAYER_NORM_EPS,
        )?)
    }
}

/// The block MLP: fc1, exact (erf) GELU, fc2.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// `{prefix}.fc1` (dim → hidden) and `{prefix}.fc2` (hidden → dim).
    pub(crate) fn new(
        pb: &mut ParamBuilder,
        prefix: &str,
        dim: usize,
        hidden: usize,
    ) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(pb, &format!("{prefix}.fc1"), dim, hidden)?,
            fc2: Linear::new(pb, &format!("{prefix}.fc2"), hidden, dim)?,
        })
    }

    /// Runs both products in `precision`.
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.fc1.set_precision(precision);
        self.fc2.set_precision(precision);
    }

    /// fc2(GELU(fc1(x))).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&fused::gelu_erf(&self.fc1.forward(x)?)?)
    }
}

/// The patch embedding: a `patch`×`patch` stride-`patch` conv from 3 channels to D, with bias.
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: usize,
}

impl PatchEmbed {
    /// `patch_embed.proj.weight` `[D, 3, p, p]` (xavier-uniform on its `(D, 3·p·p)` view) and
    /// `patch_embed.proj.bias` (0).
    pub(crate) fn new(pb: &mut ParamBuilder, dim: usize, patch: usize) -> Result<Self> {
        Ok(PatchEmbed {
            weight: pb.xavier_uniform("patch_embed.proj.weight", &[dim, 3, patch, patch])?,
            bias: pb.constant("patch_embed.proj.bias", &[dim], 0.0)?,
            patch,
        })
    }

    /// Pixels `[B, 3, S, S]` to patch tokens `[B, (S/p)², D]`, row-major over the grid.
    ///
    /// The conv as what it is, a product: each patch's `3·p·p` pixels (channel, row, column,
    /// the conv weight's order) as a row, times the weight viewed `[D, 3·p·p]`, through
    /// [`fused::linear`]. candle's conv2d backward would also compute the pixels' gradient
    /// (a transposed conv over every image) and take the weight's through a dilated conv.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch;
        let (rows, cols) = (h / p, w / p);
        let patches = pixels
            .reshape((b, c, rows, p, cols, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * rows * cols, c * p * p))?;
        let dim = self.weight.dim(0)?;
        let weight = self.weight.reshape((dim, c * p * p))?;
        Ok(fused::linear(&patches, &weight, &self.bias)?.reshape((b, rows * cols, dim))?)
    }
}
