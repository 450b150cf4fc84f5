//! Linear layers (`x·Wᵀ + b` in one op), a bias added to every row, and the column sums that
//! are the gradients of such broadcast parameters.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::products::{scaled_products_nt, Products};
use super::{fused, par_rows, rows_of};

/// A linear layer, `x·Wᵀ + b`, for `x` `[M, K]`, `W` `[N, K]` (PyTorch's layout) and `b`
/// `[N]`: one op, so the output is written once (the bias, then the product added in the same
/// task) and the backward has one node fewer to clear and sum into than a product followed by
/// [`add_bias`]. Backward: `∂x = g·W`, `∂W = gᵀ·x`, `∂b = Σ_rows g`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(fused(x) && fused(w) && fused(b)) {
        return add_bias(&scaled_products_nt(x, w, 1.0)?, b);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// [`linear`]'s op: [`Products`] of `x` and `Wᵀ` with the bias as the rows' start.
struct Linear;

impl Linear {
    const PRODUCTS: Products = Products {
        scale: 1.0,
        lhs_t: false,
        rhs_t: true,
    };
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let (bias, _) = rows_of(s3, l3, self.name())?;
        if l3.dims().len() != 1 {
            candle_core::bail!("fused-linear: a bias of shape {:?}, not [N]", l3.dims());
        }
        Self::PRODUCTS.compute((s1, l1), (s2, l2), Some(bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::PRODUCTS.grads(x, w, g)?;
        let db = g.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((dx, dw, Some(db)))
    }
}

/// Rows per partial sum of [`column_sums`]: fixed, so results do not depend on the thread
/// count.
const ROWS_PER_PARTIAL: usize = 32;

/// `k` column-sum vectors of width `d` over `rows` rows, `[k·d]` values: `accumulate(rows,
/// acc)` adds the contribution of a range of rows to `acc` (`k·d` zeros at first). Ranges of
/// [`ROWS_PER_PARTIAL`] rows are summed in parallel into partial sums, which are then added
/// in a fixed order (deterministic).
pub(super) fn column_sums(
    rows: usize,
    d: usize,
    k: usize,
    accumulate: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let width = k * d;
    let n_partials = rows.div_ceil(ROWS_PER_PARTIAL);
    let partials = par_rows(n_partials * width, width, |c, acc| {
        acc.fill(0.0);
        let start = c * ROWS_PER_PARTIAL;
        accumulate(start..rows.min(start + ROWS_PER_PARTIAL), acc);
    });
    let mut out = vec![0f32; width];
    if width > 0 {
        for partial in partials.chunks(width) {
            for (o, p) in out.iter_mut().zip(partial) {
                *o += p;
            }
        }
    }
    out
}

/// `x + b`: a bias `b` `[D]` added to every row of `x` `[.., D]` (the patch embedding's, and a
/// linear layer's where its product is not [`linear`]'s).
///
/// Backward: `∂L/∂x = g` (passed on, no copy) and `∂L/∂b = Σ_rows g`, summed by a parallel
/// column-sum kernel (candle's broadcast backward reduces over the leading axes slowly).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(fused(x) && fused(b)) {
        return x.broadcast_add(b);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (b, _) = rows_of(s2, l2, self.name())?;
        if l2.dims() != [d] {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: self.name(),
            });
        }
        let out = par_rows(x.len(), d, |r, y| {
            for ((y, &x), &b) in y.iter_mut().zip(&x[r * d..(r + 1) * d]).zip(b) {
                *y = x + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = g.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(g.clone()), Some(db)))
    }
}

/// `g` `[.., D]` ↦ `Σ_rows g` `[D]`.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "fused-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, d) = rows_of(s, l, self.name())?;
        let rows = g.len().checked_div(d).unwrap_or(0);
        let out = column_sums(rows, d, 1, |range, acc| {
            for r in range {
                for (a, &g) in acc.iter_mut().zip(&g[r * d..(r + 1) * d]) {
                    *a += g;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{check_all, max_rel_err, normal, randn, rng, TOLERANCE};
    use crate::model::fused;
    use candle_core::{DType, Tensor, Var};

    #[test]
    fn add_bias_matches_composite() {
        let f = |args: &[Tensor]| fused::add_bias(&args[0], &args[1]);
        let x = normal(&[3, 70, 24], 40, 2.0);
        check_all("bias", &f, &[x, normal(&[24], 41, 1.0)], false);
        let x = normal(&[3, 24, 70], 42, 2.0);
        check_all("bias (transposed)", &f, &[x, normal(&[24], 43, 1.0)], true);
    }

    #[test]
    fn linear_matches_composite() {
        // x·Wᵀ + b: rows cut into blocks across tasks, the bias the start of every output row.
        let f = |args: &[Tensor]| fused::linear(&args[0], &args[1], &args[2]);
        let (x, w, b) = (
            normal(&[70, 24], 44, 1.0),
            normal(&[33, 24], 45, 1.0),
            normal(&[33], 46, 1.0),
        );
        check_all("linear", &f, &[x, w, b], false);
        let x = normal(&[24, 70], 47, 1.0);
        let (w, b) = (normal(&[33, 24], 48, 1.0), normal(&[33], 49, 1.0));
        check_all("linear (transposed x)", &f, &[x, w, b], true);
    }

    #[test]
    fn linear_of_a_constant_input_gives_only_the_parameters_gradients() {
        // The patch embedding's case: pixels are no variable, so the fused op computes no gradient
        // for them (candle's composite path, the f64 reference here, does).
        let x = normal(&[70, 24], 55, 1.0);
        let grads_of = |x: &Tensor, dtype| {
            let w = Var::from_tensor(&normal(&[33, 24], 56, 1.0).to_dtype(dtype).unwrap()).unwrap();
            let b = Var::from_tensor(&normal(&[33], 57, 1.0).to_dtype(dtype).unwrap()).unwrap();
            let x = x.to_dtype(dtype).unwrap();
            let y = fused::linear(&x, w.as_tensor(), b.as_tensor()).unwrap();
            let loss = (&y * randn(&[70, 33], &mut rng(58)).to_dtype(dtype).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            if dtype == DType::F32 {
                assert!(grads.get(&x).is_none(), "a constant input gets no gradient");
            }
            [w.as_tensor(), b.as_tensor()]
                .map(|p| grads.get(p).unwrap().to_dtype(DType::F32).unwrap())
        };
        let (fused_grads, reference) = (grads_of(&x, DType::F32), grads_of(&x, DType::F64));
        for (g, r) in fused_grads.iter().zip(&reference) {
            let err = max_rel_err(g, r);
            assert!(err < TOLERANCE, "parameter gradient relative error {err:e}");
        }
    }
}
