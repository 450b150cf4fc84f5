//! AdamW's update in place on the CPU (f32): three passes over each parameter (the first
//! moment, the second moment, then the parameter), instead of the composite path's thirteen
//! tensor ops, each a pass over the parameter into a fresh buffer. PyTorch's CPU AdamW works
//! in place too (`lerp_`, `mul_`, `addcmul_`, `addcdiv_`).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

use crate::model::fused::{fused, rows_of};
use crate::pool::par_chunks_in_place;

/// Values per parallel task: enough that handing out a task costs little beside it.
const CHUNK: usize = 1 << 14;

/// The constants of one parameter's update at one step.
#[derive(Clone, Copy, Debug)]
pub(super) struct Update {
    /// First-moment decay β₁.
    pub beta1: f32,
    /// Second-moment decay β₂.
    pub beta2: f32,
    /// The parameter's factor from decoupled weight decay, `1 − lr·wd`.
    pub decay: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
    /// `√(1 − β₂ᵗ)`.
    pub sqrt_bias2: f32,
    /// Denominator epsilon.
    pub eps: f32,
}

/// Whether the in-place path applies: every tensor f32 on the CPU (the composite path serves
/// the rest, CUDA among them).
pub(super) fn applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| fused(t))
}

/// One AdamW update of `p` and its moments `m`, `v` from the gradient `g`, all in place:
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, then
/// `p ← p·(1 − lr·wd) − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps)`.
pub(super) fn update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, u: Update) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(
        &g,
        &MovingAverage {
            beta: u.beta1,
            squared: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &MovingAverage {
            beta: u.beta2,
            squared: true,
        },
    )?;
    p.inplace_op3(m, v, &ParameterStep(u))
}

/// The values of a contiguous f32 tensor being updated in place.
fn values_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &'static str) -> Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or(candle_core::Error::RequiresContiguous { op })?;
    match s {
        CpuStorage::F32(data) => Ok(&mut data[start..end]),
        other => candle_core::bail!("{op}: expected f32, got {:?}", other.dtype()),
    }
}

/// Refuses operands whose lengths differ from the values updated in place.
fn same_lengths(op: &str, values: &[f32], operands: &[&[f32]]) -> Result<()> {
    if operands.iter().any(|o| o.len() != values.len()) {
        let lengths: Vec<usize> = operands.iter().map(|o| o.len()).collect();
        candle_core::bail!("{op}: {} values with operands of {lengths:?}", values.len());
    }
    Ok(())
}

/// `a ← β·a + (1−β)·g` (the first moment), or of `g²` where `squared` (the second).
struct MovingAverage {
    beta: f32,
    squared: bool,
}

impl InplaceOp2 for MovingAverage {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (g, _) = rows_of(s2, l2, self.name())?;
        let a = values_mut(s1, l1, self.name())?;
        same_lengths(self.name(), a, &[g])?;
        let (beta, rest) = (self.beta, 1.0 - self.beta);
        par_chunks_in_place(a, CHUNK, |c, a| {
            let g = &g[c * CHUNK..c * CHUNK + a.len()];
            if self.squared {
                for (a, &g) in a.iter_mut().zip(g) {
                    *a = *a * beta + g * g * rest;
                }
            } else {
                for (a, &g) in a.iter_mut().zip(g) {
                    *a = *a * beta + g * rest;
                }
            }
        });
        Ok(())
    }
}

/// `p ← p·decay − step_size · m / (√v/√bias2 + eps)`, from the updated moments.
struct ParameterStep(Update);

impl InplaceOp3 for ParameterStep {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let ((m, _), (v, _)) = (rows_of(s2, l2, self.name())?, rows_of(s3, l3, self.name())?);
        let p = values_mut(s1, l1, self.name())?;
        same_lengths(self.name(), p, &[m, v])?;
        let u = self.0;
        par_chunks_in_place(p, CHUNK, |c, p| {
            let span = c * CHUNK..c * CHUNK + p.len();
            for ((p, &m), &v) in p.iter_mut().zip(&m[span.clone()]).zip(&v[span]) {
                *p = *p * u.decay - u.step_size * (m / (v.sqrt() / u.sqrt_bias2 + u.eps));
            }
        });
        Ok(())
    }
}
