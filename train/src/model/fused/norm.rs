//! LayerNorm over the last axis, forward and both backward kernels (input; weight and bias).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::lanes::{dot, sum};
use super::linear::column_sums;
use super::{fused, par_rows, rows_of};

/// LayerNorm over the last axis, `y = x̂ ⊙ w + b` with `x̂ = (x − μ) / √(σ² + eps)` and the
/// biased variance `σ² = mean((x − μ)²)` as in PyTorch; `w`, `b` are `[D]`.
///
/// Backward, with `r = 1/√(σ² + eps)`, `ĝ = g ⊙ w` and means over the row:
/// `∂L/∂x = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂))`, `∂L/∂w = Σ_rows g ⊙ x̂`,
/// `∂L/∂b = Σ_rows g`. Both kernels recompute μ and r from x instead of keeping them.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !(fused(x) && fused(w) && fused(b)) {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
        return normed.broadcast_mul(w)?.broadcast_add(b);
    }
    let (w, b) = (w.contiguous()?, b.contiguous()?);
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] || b.dims() != [d] {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: x.shape().clone(),
            rhs: w.shape().clone(),
            op: "fused-layer-norm",
        });
    }
    x.contiguous()?
        .apply_op3(&w, &b, LayerNorm { eps: eps as f32 })
}

struct LayerNorm {
    eps: f32,
}

/// Writes `x − μ` of a row to `centred` and returns `√(σ² + eps)`.
#[inline(always)]
fn centre(x: &[f32], eps: f32, centred: &mut [f32]) -> f32 {
    let inv_d = (1.0 / x.len() as f64) as f32;
    let mean = sum(x) * inv_d;
    for (c, &x) in centred.iter_mut().zip(x) {
        *c = x - mean;
    }
    (dot(centred, centred) * inv_d + eps).sqrt()
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (w, _) = rows_of(s2, l2, self.name())?;
        let (b, _) = rows_of(s3, l3, self.name())?;
        let out = par_rows(x.len(), d, |r, y| {
            let std = centre(&x[r * d..(r + 1) * d], self.eps, y);
            for ((y, &w), &b) in y.iter_mut().zip(w).zip(b) {
                *y = (*y / std) * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &LayerNormBwdX { eps: self.eps })?;
        let dwb = x.apply_op2_no_bwd(&g, &LayerNormBwdParams { eps: self.eps })?;
        Ok((Some(dx), Some(dwb.get(0)?), Some(dwb.get(1)?)))
    }
}

/// `(x, w, g) ↦ r · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂))` with `ĝ = g ⊙ w`, rows of the last axis.
struct LayerNormBwdX {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdX {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (w, _) = rows_of(s2, l2, self.name())?;
        let (g, _) = rows_of(s3, l3, self.name())?;
        let inv_d = (1.0 / d as f64) as f32;
        let out = par_rows(x.len(), d, |r, dx| {
            let g = &g[r * d..(r + 1) * d];
            // dx holds x̂ until the last loop overwrites it.
            let std = centre(&x[r * d..(r + 1) * d], self.eps, dx);
            let mut g_sum = 0f32;
            let mut gx_sum = 0f32;
            for ((xh, &g), &w) in dx.iter_mut().zip(g).zip(w) {
                *xh /= std;
                g_sum += g * w;
                gx_sum += g * w * *xh;
            }
            let (g_mean, gx_mean) = (g_sum * inv_d, gx_sum * inv_d);
            for ((dx, &g), &w) in dx.iter_mut().zip(g).zip(w) {
                *dx = (g * w - g_mean - *dx * gx_mean) / std;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(x, g) ↦ [Σ_rows g ⊙ x̂; Σ_rows g]`, `[2, D]`: the gradients of LayerNorm's `w` and `b`.
struct LayerNormBwdParams {
    eps: f32,
}

impl CustomOp2 for LayerNormBwdParams {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let rows = x.len().checked_div(d).unwrap_or(0);
        let out = column_sums(rows, d, 2, |range, acc| {
            let (dw, db) = acc.split_at_mut(d);
            let mut xh = vec![0f32; d];
            for r in range {
                let std = centre(&x[r * d..(r + 1) * d], self.eps, &mut xh);
                for (((dw, db), &xh), &g) in dw
                    .iter_mut()
                    .zip(db.iter_mut())
                    .zip(&xh)
                    .zip(&g[r * d..(r + 1) * d])
                {
                    *dw += g * (xh / std);
                    *db += g;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((2, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{check_all, normal};
    use crate::model::fused;
    use candle_core::Tensor;

    #[test]
    fn layer_norm_matches_composite() {
        let eps = crate::model::LAYER_NORM_EPS;
        let f = |args: &[Tensor]| fused::layer_norm(&args[0], &args[1], &args[2], eps);
        let params = |d: usize, seed: u64| {
            let w = (normal(&[d], seed, 0.5) + 1.0).unwrap();
            [w, normal(&[d], seed + 1, 0.5)]
        };
        // An offset mean, as in real activations.
        let x = (normal(&[2, 7, 48], 7, 3.0) + 5.0).unwrap();
        let [w, b] = params(48, 30);
        check_all("layer norm", &f, &[x, w, b], false);
        let [w, b] = params(48, 32);
        let x = normal(&[2, 48, 7], 8, 3.0);
        check_all("layer norm (transposed)", &f, &[x, w, b], true);
        // Large values (a large common offset loses the spread to f32 rounding in any order of
        // summation, so the composite f32 path is no better there). 150 rows: several partial
        // sums of the parameter gradients.
        let [w, b] = params(64, 34);
        let x = normal(&[2, 75, 64], 9, 1e4);
        check_all("layer norm (large)", &f, &[x, w, b], false);
    }
}
