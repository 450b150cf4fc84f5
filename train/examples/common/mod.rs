//! What the training examples share: `--name value` flags, the device and precision they name,
//! and random inputs of a distillation step.

#![allow(dead_code)] // each example uses its own subset

use candle_core::{Device, Tensor, D};
use tinymim_train::device::DeviceSpec;
use tinymim_train::Precision;

/// The value after `--name` on the command line.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--name N`, or `default`.
pub fn number(name: &str, default: usize) -> usize {
    flag(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
    })
}

/// Whether `--name` is on the command line.
pub fn switch(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// `--device auto|cpu|cuda[:N]` (default cpu), opened.
pub fn device() -> Device {
    let spec: DeviceSpec = flag("--device")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    tinymim_train::device::open(spec).unwrap_or_else(|e| panic!("{e}"))
}

/// A precision by its command-line name.
pub fn precision_named(name: &str) -> Precision {
    match name {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        "tf32" => Precision::Tf32,
        other => panic!("unknown precision {other}: expected f32, bf16 or tf32"),
    }
}

/// `--precision f32|bf16|tf32` (default f32).
pub fn precision() -> Precision {
    precision_named(&flag("--precision").unwrap_or_else(|| "f32".into()))
}

/// Pixels `[B, 3, S, S]` and relation targets `[B, H, N, N]` (row-stochastic) drawn on the CPU
/// from `seed` and copied to `device`, so every device gets the same values.
pub fn random_step_inputs(
    batch: usize,
    size: usize,
    heads: usize,
    tokens: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
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
