//! `train bench`: what this machine does with the student, measured by the product itself, so
//! that one binary serves every check of a GPU machine (`scripts/gpu_check.sh`):
//!
//! - [`parity`]: a distillation step on a device against the same step on the CPU;
//! - [`step`]: the student's step (and forwards) per second, at a preset, batch and precision;
//! - [`throughput`]: training from a store (or an online teacher) against synthetic targets,
//!   and the share of time spent waiting for data;
//! - [`rendezvous`]: the start-up hand-off of a multi-process job under a real launcher.
//!
//! Each prints one JSON object per figure (`check` names it) for scripts, or a table.

pub mod parity;
pub mod rendezvous;
pub mod step;
pub mod throughput;

use std::time::Instant;

use candle_core::{Device, Tensor, D};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// A precision as the figures name it: `f32`, `bf16` or `tf32`.
pub fn precision_name(precision: crate::Precision) -> String {
    format!("{precision:?}").to_lowercase()
}

/// Pixels `[B, 3, S, S]` and relation targets `[B, H, N, N]` (row-stochastic) drawn on the CPU
/// from `seed` and copied to `device`, so that every device gets the same values.
pub fn random_step_inputs(
    batch: usize,
    size: usize,
    heads: usize,
    tokens: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut normal = |shape: (usize, usize, usize, usize)| -> candle_core::Result<Tensor> {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        let values: Vec<f32> = (0..len).map(|_| StandardNormal.sample(&mut rng)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    };
    let pixels = normal((batch, 3, size, size))?;
    let qk = candle_nn::ops::softmax(&normal((batch, heads, tokens, tokens))?, D::Minus1)?;
    let vv = candle_nn::ops::softmax(&(normal((batch, heads, tokens, tokens))? * 2.0)?, D::Minus1)?;
    Ok((
        pixels.to_device(device)?,
        qk.to_device(device)?,
        vv.to_device(device)?,
    ))
}

/// Seconds per call of `f` over `reps` calls after one warm-up call, the device drained before
/// the clock starts and stops (GPU work is asynchronous).
pub fn seconds_per_call<T>(
    device: &Device,
    reps: usize,
    mut f: impl FnMut() -> crate::Result<T>,
) -> crate::Result<f64> {
    f()?;
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / reps.max(1) as f64)
}
