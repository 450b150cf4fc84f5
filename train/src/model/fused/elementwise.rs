//! Element-wise kernels: the exact (erf) GELU, and a residual branch added under drop path's
//! per-sample scaling.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::lanes::{erf, exp};
use super::{fused, par_rows, rows_of};

/// The exact GELU, `x · Φ(x) = ½ x (1 + erf(x/√2))`, elementwise.
///
/// Backward: `∂L/∂x = g · (Φ(x) + x φ(x))` with `φ(x) = exp(−x²/2)/√(2π)`, in one pass. It
/// takes `Φ(x) = y / x` from the forward's result instead of evaluating erf again (the
/// forward computes `y` as `Φ(x) · x`, so this is Φ as the forward had it, to a rounding);
/// `Φ = ½` for `|x| < 1e-30`, where that division would lose precision.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

/// Values per row of the elementwise kernels (GELU, per-sample scaling), which split their
/// input into rows of this length (the last one shorter) for [`par_rows`].
const ELEMENTWISE_CHUNK: usize = 4096;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, _) = rows_of(s, l, self.name())?;
        let out = par_rows(x.len(), ELEMENTWISE_CHUNK, |c, y| {
            let x = &x[c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + y.len()];
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * x;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(x.apply_op3_no_bwd(y, &g, &GeluBwd)?))
    }
}

/// `(x, y, g) ↦ g · (Φ(x) + x φ(x))` with `Φ(x) = y / x`, elementwise.
struct GeluBwd;

impl CustomOp3 for GeluBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-bwd"
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
        let (x, _) = rows_of(s1, l1, self.name())?;
        let (y, _) = rows_of(s2, l2, self.name())?;
        let (g, _) = rows_of(s3, l3, self.name())?;
        // 1/√(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let out = par_rows(x.len(), ELEMENTWISE_CHUNK, |c, dx| {
            let part = c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + dx.len();
            let (x, y, g) = (&x[part.clone()], &y[part.clone()], &g[part]);
            for (((dx, &x), &y), &g) in dx.iter_mut().zip(x).zip(y).zip(g) {
                let cdf = if x.abs() < 1e-30 { 0.5 } else { y / x };
                let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
                *dx = g * (cdf + x * pdf);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x + y` with sample `i` of `y` `[B, ...]` multiplied by `factors[i]`: a residual branch
/// under drop path's mask, added to the stream in one pass and without a broadcast mask
/// tensor.
///
/// Backward: `∂L/∂x = g` (passed on, no copy), `∂L/∂y = g` with sample `i` multiplied by
/// `factors[i]`; the factors are constants (candle's `Mul` backward would also compute a
/// gradient for the mask).
pub fn add_scaled_samples(x: &Tensor, y: &Tensor, factors: &[f32]) -> Result<Tensor> {
    if y.dim(0)? != factors.len() || x.dims() != y.dims() {
        return Err(candle_core::Error::Msg(format!(
            "add_scaled_samples: {} factors for {:?} added to {:?}",
            factors.len(),
            y.dims(),
            x.dims()
        )));
    }
    if !(fused(x) && fused(y)) {
        let mut shape = vec![1; y.rank()];
        shape[0] = factors.len();
        let mask = Tensor::from_slice(factors, shape, y.device())?.to_dtype(y.dtype())?;
        return x + y.broadcast_mul(&mask)?;
    }
    x.contiguous()?.apply_op2(
        &y.contiguous()?,
        AddScaledSamples {
            factors: factors.to_vec(),
        },
    )
}

/// Fills `out`, the values from flat index `start` of a `[B, ...]` tensor of `per_sample`
/// values a sample, by `f(sample's factor, offset in out, offset in the tensor, values)` for
/// the part of it in each sample.
fn by_sample(
    factors: &[f32],
    per_sample: usize,
    start: usize,
    out: &mut [f32],
    f: impl Fn(f32, usize, &mut [f32]),
) {
    let mut at = 0;
    while at < out.len() {
        let sample = (start + at) / per_sample;
        let stop = out.len().min((sample + 1) * per_sample - start);
        f(factors[sample], start + at, &mut out[at..stop]);
        at = stop;
    }
}

struct AddScaledSamples {
    factors: Vec<f32>,
}

impl CustomOp2 for AddScaledSamples {
    fn name(&self) -> &'static str {
        "fused-add-scaled-samples"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, _) = rows_of(s1, l1, self.name())?;
        let (y, _) = rows_of(s2, l2, self.name())?;
        let per_sample = y.len() / self.factors.len().max(1);
        let out = par_rows(y.len(), ELEMENTWISE_CHUNK, |c, out| {
            by_sample(
                &self.factors,
                per_sample,
                c * ELEMENTWISE_CHUNK,
                out,
                |f, at, out| {
                    let (x, y) = (&x[at..at + out.len()], &y[at..at + out.len()]);
                    for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                        *o = x + y * f;
                    }
                },
            );
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scaled = g.contiguous()?.apply_op1_no_bwd(&ScaleSamples {
            factors: &self.factors,
        })?;
        Ok((Some(g.clone()), Some(scaled)))
    }
}

/// `g` `[B, ...]` with sample `i` multiplied by `factors[i]`.
struct ScaleSamples<'a> {
    factors: &'a [f32],
}

impl CustomOp1 for ScaleSamples<'_> {
    fn name(&self) -> &'static str {
        "fused-scale-samples"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, _) = rows_of(s, l, self.name())?;
        let per_sample = g.len() / self.factors.len().max(1);
        let out = par_rows(g.len(), ELEMENTWISE_CHUNK, |c, out| {
            by_sample(
                self.factors,
                per_sample,
                c * ELEMENTWISE_CHUNK,
                out,
                |f, at, out| {
                    let g = &g[at..at + out.len()];
                    for (o, &g) in out.iter_mut().zip(g) {
                        *o = g * f;
                    }
                },
            );
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{check, check_all, large, normal};
    use crate::model::fused;
    use candle_core::{Device, Tensor};

    #[test]
    fn gelu_matches_composite() {
        let f = |x: &Tensor| fused::gelu_erf(x);
        // More values than one task of the elementwise kernel, and not a multiple of it.
        check("gelu", &f, &normal(&[3, 71, 300], 10, 3.0), false);
        check(
            "gelu (transposed)",
            &f,
            &normal(&[2, 30, 11], 11, 3.0),
            true,
        );
        check("gelu (large)", &f, &large(&[4, 9, 33], 12), false);
        // Zero, tiny and subnormal values, where the backward cannot take Φ(x) as y / x.
        let special = [
            0.0f32, -0.0, 1e-38, -1e-40, 1e-20, -1e-10, 3e-7, -8.0, -13.0, -20.0,
        ];
        let x = Tensor::cat(
            &[
                Tensor::new(&special, &Device::Cpu).unwrap(),
                normal(&[10], 13, 1.0),
            ],
            0,
        )
        .unwrap();
        check("gelu (special values)", &f, &x, false);
    }

    #[test]
    fn add_scaled_samples_matches_composite() {
        let factors = [0.0f32, 1.25, 1.25, 0.0, 1.25];
        let f = move |args: &[Tensor]| fused::add_scaled_samples(&args[0], &args[1], &factors);
        // More values than one task of the elementwise kernel, samples not aligned to it.
        let (x, y) = (
            normal(&[5, 197, 19], 50, 1.0),
            normal(&[5, 197, 19], 53, 1.0),
        );
        check_all("add scaled samples", &f, &[x, y], false);
        let (x, y) = (normal(&[5, 19, 7], 51, 1.0), normal(&[5, 7, 19], 54, 1.0));
        check_all("add scaled samples (transposed)", &f, &[x, y], true);
        let x = normal(&[4, 3], 52, 1.0);
        assert!(fused::add_scaled_samples(&x, &x, &factors).is_err());
    }
}
