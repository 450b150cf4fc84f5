//! Softmax, log-softmax and the relation KL over the last axis, forward and backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::lanes::{dot, exp, ln, max_and_log_sum_exp, softmax_in_place, sum, sum_pairs};
use super::{fused, par_rows, rows_of};

/// `softmax(scale · x)` over the last axis. The scale (attention's d^-½) is folded in so that
/// the scaled logits are never materialised.
///
/// Forward, per row: `s = scale·x`, `y = exp(s − max s) / Σ exp(s − max s)`.
/// Backward: `∂L/∂x = scale · y ⊙ (g − Σ g·y)` (the softmax Jacobian is `diag(y) − y yᵀ`).
pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused(x) {
        let x = if scale == 1.0 {
            x.clone()
        } else {
            (x * scale)?
        };
        return candle_nn::ops::softmax(&x, D::Minus1);
    }
    x.contiguous()?.apply_op1(Softmax {
        scale: scale as f32,
    })
}

struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s, l, self.name())?;
        let out = par_rows(x.len(), d, |r, y| {
            for (y, &x) in y.iter_mut().zip(&x[r * d..(r + 1) * d]) {
                *y = x * self.scale;
            }
            softmax_in_place(y);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(
            y.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?,
        ))
    }
}

/// `(y, g) ↦ scale · y ⊙ (g − Σ g·y)`, rows of the last axis.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, d) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let out = par_rows(y.len(), d, |r, dx| {
            let (y, g) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let gy = dot(g, y);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = self.scale * (y * (g - gy));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `log_softmax(x)` over the last axis.
///
/// Forward, per row: `y = (x − max x) − ln Σ exp(x − max x)` (stable for any logits).
/// Backward: `∂L/∂x = g − softmax(x) · Σ g`, with `softmax(x) = exp(y)`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return candle_nn::ops::log_softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(LogSoftmax)
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "fused-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s, l, self.name())?;
        let out = par_rows(x.len(), d, |r, y| {
            let x = &x[r * d..(r + 1) * d];
            let (max, lse) = max_and_log_sum_exp(x);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - max) - lse;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(&g, &LogSoftmaxBwd)?))
    }
}

/// `(y, g) ↦ g − exp(y) · Σ g`, rows of the last axis.
struct LogSoftmaxBwd;

impl CustomOp2 for LogSoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-log-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, d) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let out = par_rows(y.len(), d, |r, dx| {
            let (y, g) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let sum = sum(g);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = g - exp(y) * sum;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The forward KL of each row, `Σ_j T_j · (ln T_j − log_softmax(S)_j)` over the last axis,
/// with `0 · ln 0 = 0`: logits `S` and target distributions `T` of the same shape give the
/// per-row divergences, shape `S.dims()[..-1]`. The target carries no gradient.
///
/// Backward: `∂L/∂S_j = g · (softmax(S)_j · Σ T − T_j)` (`Σ T = 1` for a distribution, but the
/// formula holds for any non-negative T). The backward recomputes the softmax from `S`, so
/// no `[.., N]`-sized intermediate is kept between forward and backward.
pub fn kl_rows(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let target = target.detach();
    if !(fused(logits) && fused(&target)) {
        let positive = target.gt(0.0)?;
        // ln T where T > 0, and 0 elsewhere, so that 0·ln 0 counts as 0.
        let log_target = positive.where_cond(&target.log()?, &target.zeros_like()?)?;
        let log_student = log_softmax_last_dim(logits)?;
        return (target * (log_target - log_student)?)?.sum(D::Minus1);
    }
    logits
        .contiguous()?
        .apply_op2(&target.contiguous()?, KlRows)
}

struct KlRows;

impl CustomOp2 for KlRows {
    fn name(&self) -> &'static str {
        "fused-kl-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: self.name(),
            });
        }
        let (s, d) = rows_of(s1, l1, self.name())?;
        let (t, _) = rows_of(s2, l2, self.name())?;
        let rows = s.len().checked_div(d).unwrap_or(0);
        let out = par_rows(rows, 1, |r, kl| {
            let (s, t) = (&s[r * d..(r + 1) * d], &t[r * d..(r + 1) * d]);
            let (max, lse) = max_and_log_sum_exp(s);
            // A target below f32's smallest normal (≈1.2e-38) adds less than 1e-36: counted
            // as zero, as zero itself is (0·ln 0 = 0).
            kl[0] = sum_pairs(s, t, |s, t| {
                let term = t * (ln(t) - ((s - max) - lse));
                if t >= f32::MIN_POSITIVE {
                    term
                } else {
                    0.0
                }
            });
        });
        let mut dims = l1.dims().to_vec();
        dims.pop();
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        s: &Tensor,
        t: &Tensor,
        _kl: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        Ok((Some(s.apply_op3_no_bwd(t, &g, &KlRowsBwd)?), None))
    }
}

/// `(S, T, g) ↦ g · (softmax(S) · Σ T − T)` per row of the last axis, one `g` per row.
struct KlRowsBwd;

impl CustomOp3 for KlRowsBwd {
    fn name(&self) -> &'static str {
        "fused-kl-rows-bwd"
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
        let (s, d) = rows_of(s1, l1, self.name())?;
        let (t, _) = rows_of(s2, l2, self.name())?;
        let (g, _) = rows_of(s3, l3, self.name())?;
        let out = par_rows(s.len(), d, |r, ds| {
            let (s, t) = (&s[r * d..(r + 1) * d], &t[r * d..(r + 1) * d]);
            let (max, lse) = max_and_log_sum_exp(s);
            let mass = sum(t);
            for ((ds, &s), &t) in ds.iter_mut().zip(s).zip(t) {
                *ds = g[r] * (exp(s - max - lse) * mass - t);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{check, large, normal, rng};
    use crate::model::fused;
    use candle_core::{Device, Tensor};
    use rand::Rng;

    /// Target distributions with exact zeros: every row has some, some rows are one-hot.
    fn sparse_targets(shape: &[usize], seed: u64) -> Tensor {
        let mut r = rng(seed);
        let d = *shape.last().unwrap();
        let rows: usize = shape.iter().product::<usize>() / d;
        let mut values = Vec::with_capacity(rows * d);
        for row in 0..rows {
            let mut p: Vec<f32> = (0..d)
                .map(|j| {
                    let zero = if row % 3 == 0 {
                        j != row % d
                    } else {
                        j % 4 == 1
                    };
                    if zero {
                        0.0
                    } else {
                        r.random_range(0.01f32..1.0)
                    }
                })
                .collect();
            let sum: f32 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= sum);
            values.extend(p);
        }
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn softmax_matches_composite() {
        let f = |x: &Tensor| fused::softmax_last_dim(x, 0.125);
        check("softmax", &f, &normal(&[2, 3, 17, 17], 1, 4.0), false);
        check(
            "softmax (transposed)",
            &f,
            &normal(&[2, 3, 17, 17], 2, 4.0),
            true,
        );
        let f = |x: &Tensor| fused::softmax_last_dim(x, 1.0);
        check("softmax (large logits)", &f, &large(&[4, 9, 33], 3), false);
    }

    #[test]
    fn log_softmax_matches_composite() {
        let f = |x: &Tensor| fused::log_softmax_last_dim(x);
        check("log_softmax", &f, &normal(&[2, 3, 17, 17], 4, 4.0), false);
        check(
            "log_softmax (transposed)",
            &f,
            &normal(&[3, 5, 21], 5, 4.0),
            true,
        );
        check(
            "log_softmax (large logits)",
            &f,
            &large(&[4, 9, 33], 6),
            false,
        );
    }

    #[test]
    fn kl_rows_matches_composite() {
        let shape = [2, 3, 13, 13];
        let dense = candle_nn::ops::softmax_last_dim(&normal(&shape, 13, 2.0)).unwrap();
        for (what, target, logits, transpose) in [
            ("kl", dense.clone(), normal(&shape, 14, 3.0), false),
            (
                "kl (transposed)",
                dense.clone(),
                normal(&shape, 15, 3.0),
                true,
            ),
            // Rows whose mass is not 1 exercise the Σ T factor of the backward.
            (
                "kl (rows of mass 0.5)",
                (dense * 0.5).unwrap(),
                normal(&shape, 22, 3.0),
                false,
            ),
            (
                "kl (zeros)",
                sparse_targets(&shape, 16),
                normal(&shape, 17, 3.0),
                false,
            ),
            (
                "kl (large logits)",
                sparse_targets(&shape, 18),
                large(&shape, 19),
                false,
            ),
        ] {
            let f = move |s: &Tensor| {
                let t = target.to_dtype(s.dtype())?;
                fused::kl_rows(s, &t)
            };
            check(what, &f, &logits, transpose);
        }
    }

    #[test]
    fn kl_rows_of_a_distribution_against_itself_is_zero_even_with_zeros() {
        let t = sparse_targets(&[2, 5, 9], 20);
        let logits = t.clamp(1e-30, 1.0).unwrap().log().unwrap();
        let logits = t
            .gt(0.0)
            .unwrap()
            .where_cond(&logits, &(t.zeros_like().unwrap() - 1e4).unwrap());
        let kl: Vec<f32> = fused::kl_rows(&logits.unwrap(), &t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(kl.iter().all(|v| v.abs() < 1e-5), "{kl:?}");
    }
}
