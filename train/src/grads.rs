//! Gradients by parameter name: collection after backward, accumulation over micro-batches,
//! and clipping by global norm.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use crate::error::Result;
use crate::model::fused::{dot, fused, rows_of};
use crate::model::Param;
use crate::pool::par_spans;

/// The gradient of each parameter that received one, keyed by its timm name. Parameters
/// outside the loss's graph are absent (and AdamW leaves them untouched, as PyTorch does for
/// a `None` grad).
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    grads: BTreeMap<String, Tensor>,
}

impl Gradients {
    /// Collects the gradients of `params` from a backward pass.
    pub fn collect(params: &[Param], store: &GradStore) -> Gradients {
        let grads = params
            .iter()
            .filter_map(|p| Some((p.name.clone(), store.get(p.var.as_tensor())?.detach())))
            .collect();
        Gradients { grads }
    }

    /// The gradient of parameter `name`, if it received one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.grads.get(name)
    }

    /// Names and gradients, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.grads.iter().map(|(n, g)| (n.as_str(), g))
    }

    /// Replaces each gradient, in [`Gradients::iter`]'s order, by `f` of it (the data-parallel
    /// sum writes the summed gradients back with it).
    pub fn replace_each(
        &mut self,
        mut f: impl FnMut(&Tensor) -> candle_core::Result<Tensor>,
    ) -> Result<()> {
        for g in self.grads.values_mut() {
            *g = f(g)?;
        }
        Ok(())
    }

    /// Adds `other` into `self` (gradient accumulation: the sum over micro-batches). A
    /// parameter present in only one side keeps that side's gradient.
    pub fn accumulate(&mut self, other: Gradients) -> Result<()> {
        for (name, g) in other.grads {
            let sum = match self.grads.remove(&name) {
                Some(acc) => (acc + g)?,
                None => g,
            };
            self.grads.insert(name, sum);
        }
        Ok(())
    }

    /// Σ‖g‖² over every gradient as an f64 scalar tensor on the gradients' device, computed
    /// there without reading anything back (`None` without gradients): the step reads it back
    /// together with its loss.
    pub fn squared_norm(&self) -> Result<Option<Tensor>> {
        let squares = self
            .grads
            .values()
            .map(sum_of_squares)
            .collect::<candle_core::Result<Vec<_>>>()?;
        if squares.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::stack(&squares, 0)?.sum_all()?))
    }

    /// The global L2 norm over every gradient, √(Σ‖g‖²), accumulated in f64.
    pub fn global_norm(&self) -> Result<f64> {
        Ok(match self.squared_norm()? {
            Some(sum) => sum.to_scalar::<f64>()?.sqrt(),
            None => 0.0,
        })
    }

    /// Scales every gradient so that a global norm of `norm` becomes at most `max_norm`
    /// (PyTorch's `clip_grad_norm_`: factor max_norm / (norm + 1e-6), only when below 1).
    pub fn clip_to_norm(&mut self, max_norm: f64, norm: f64) -> Result<()> {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            for g in self.grads.values_mut() {
                *g = (&*g * factor)?;
            }
        }
        Ok(())
    }
}

/// `Σ x²` of a tensor as an f64 scalar. On the CPU in f32, one parallel pass with no
/// temporary: f32 lanes within a chunk, the chunks' partial sums added in f64. Elsewhere
/// candle's `sqr` and `sum_all`.
fn sum_of_squares(x: &Tensor) -> candle_core::Result<Tensor> {
    if !fused(x) {
        return x.sqr()?.sum_all()?.to_dtype(DType::F64);
    }
    x.contiguous()?.apply_op1_no_bwd(&SumOfSquares)
}

/// [`sum_of_squares`]' CPU op.
struct SumOfSquares;

impl SumOfSquares {
    /// Values per partial sum (and parallel task).
    const CHUNK: usize = 1 << 14;
}

impl CustomOp1 for SumOfSquares {
    fn name(&self) -> &'static str {
        "sum-of-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, _) = rows_of(s, l, self.name())?;
        let chunks = x.len().div_ceil(Self::CHUNK);
        let partials = par_spans(
            chunks,
            chunks,
            |c| c..c + 1,
            |c, partial| {
                let x = &x[c * Self::CHUNK..x.len().min((c + 1) * Self::CHUNK)];
                partial[0] = dot(x, x);
            },
        );
        let sum = partials.iter().map(|&p| p as f64).sum::<f64>();
        Ok((CpuStorage::F64(vec![sum]), Shape::from(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grads(pairs: &[(&str, &[f32])]) -> Gradients {
        Gradients {
            grads: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), Tensor::new(*v, &Device::Cpu).unwrap()))
                .collect(),
        }
    }

    fn values(g: &Gradients, name: &str) -> Vec<f32> {
        g.get(name).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn accumulation_sums_and_keeps_one_sided_entries() {
        let mut a = grads(&[("w", &[1.0, 2.0]), ("b", &[5.0])]);
        a.accumulate(grads(&[("w", &[0.5, -1.0]), ("c", &[3.0])]))
            .unwrap();
        assert_eq!(values(&a, "w"), vec![1.5, 1.0]);
        assert_eq!(values(&a, "b"), vec![5.0]);
        assert_eq!(values(&a, "c"), vec![3.0]);
    }

    #[test]
    fn clipping_rescales_to_the_max_norm_only_when_above() {
        // Global norm of (3, 4) and (12) is 13.
        let mut g = grads(&[("a", &[3.0, 4.0]), ("b", &[12.0])]);
        let norm = g.global_norm().unwrap();
        assert!((norm - 13.0).abs() < 1e-9);
        let squared = g
            .squared_norm()
            .unwrap()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((squared - 169.0).abs() < 1e-9, "one tensor holds Σ‖g‖²");
        g.clip_to_norm(26.0, norm).unwrap();
        assert_eq!(values(&g, "a"), vec![3.0, 4.0], "below the max: untouched");
        g.clip_to_norm(1.0, norm).unwrap();
        let f = 1.0 / (13.0 + 1e-6);
        for (got, want) in values(&g, "a").iter().zip([3.0 * f, 4.0 * f]) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        assert!((g.global_norm().unwrap() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn squared_norm_of_many_chunks_matches_an_f64_sum_in_f32_and_f64() {
        // Several of the CPU op's chunks and a partial one, in f32 (the CPU op) and in f64
        // (candle's composite ops).
        let values: Vec<f32> = (0..3 * SumOfSquares::CHUNK + 777)
            .map(|i| ((i as f32) * 0.61).cos() * (1.0 + (i % 7) as f32))
            .collect();
        let want: f64 = values.iter().map(|&v| v as f64 * v as f64).sum();
        let g32 = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        let g64 = g32.to_dtype(DType::F64).unwrap();
        for g in [g32, g64] {
            let dtype = g.dtype();
            let g = Gradients {
                grads: [("w".to_string(), g)].into(),
            };
            let got = g
                .squared_norm()
                .unwrap()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                (got - want).abs() / want < 1e-6,
                "{dtype:?}: {got} vs {want}"
            );
        }
    }
}
