//! A pre-norm transformer block with per-sample drop path.

use candle_core::Tensor;

use super::attention::{Attention, HeadsQkv};
use super::layers::{LayerNorm, Mlp};
use super::params::ParamBuilder;
use crate::error::Result;
use crate::precision::Precision;
use crate::rng::SampleDraws;

/// `x += DropPath(Attn(LN1 x)); x += DropPath(MLP(LN2 x))`.
#[derive(Clone, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    drop_path: f64,
}

/// Width and rates of one block.
pub(crate) struct BlockSpec {
    pub dim: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub drop_path: f64,
}

impl Block {
    /// `blocks.{index}.*` with timm's names.
    pub(crate) fn new(pb: &mut ParamBuilder, index: usize, spec: &BlockSpec) -> Result<Self> {
        let p = format!("blocks.{index}");
        Ok(Block {
            norm1: LayerNorm::new(pb, &format!("{p}.norm1"), spec.dim)?,
            attn: Attention::new(pb, &format!("{p}.attn"), spec.dim, spec.heads)?,
            norm2: LayerNorm::new(pb, &format!("{p}.norm2"), spec.dim)?,
            mlp: Mlp::new(pb, &format!("{p}.mlp"), spec.dim, spec.mlp_dim)?,
            drop_path: spec.drop_path,
        })
    }

    /// Runs the block's matrix products in `precision`.
    pub(crate) fn set_precision(&mut self, precision: Precision) {
        self.attn.set_precision(precision);
        self.mlp.set_precision(precision);
    }

    /// The full block on `[B, N, D]`. With `rng`, drop path is active (training); without,
    /// the block is deterministic (evaluation).
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut SampleDraws>) -> Result<Tensor> {
        let attn = self.attn.forward(&self.norm1.forward(x)?)?;
        let x = add_dropped_path(x, &attn, self.drop_path, rng.as_deref_mut())?;
        let mlp = self.mlp.forward(&self.norm2.forward(&x)?)?;
        add_dropped_path(&x, &mlp, self.drop_path, rng)
    }

    /// Only LN1 and the qkv projection, split into this block's heads: all distillation needs
    /// of the last block.
    pub fn qkv(&self, x: &Tensor) -> Result<HeadsQkv> {
        self.attn.qkv(&self.norm1.forward(x)?)
    }
}

/// `x + drop_path(branch)`: the residual branch `[B, ...]` added to the stream `x` with whole
/// samples zeroed with probability `rate` and the kept ones scaled by 1/(1 − rate) (timm's
/// `drop_path`, `scale_by_keep`). Drop path is a no-op without an RNG or at rate 0, so it
/// draws nothing then.
fn add_dropped_path(
    x: &Tensor,
    branch: &Tensor,
    rate: f64,
    draws: Option<&mut SampleDraws>,
) -> Result<Tensor> {
    let Some(draws) = draws.filter(|_| rate > 0.0) else {
        return Ok((x + branch)?);
    };
    let mask = draws
        .keep_scales(branch.dim(0)?, 1.0 - rate)
        .map_err(candle_core::Error::Msg)?;
    Ok(super::fused::add_scaled_samples(x, branch, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Part;
    use crate::rng::TrainRng;
    use candle_core::Device;

    #[test]
    fn drop_path_zeroes_or_rescales_whole_samples() {
        let x = Tensor::ones((64, 3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut rng = TrainRng::from_seed(3);
        let mut draws = SampleDraws::new(&mut rng, Part::WHOLE, 64);
        let y = (add_dropped_path(&x, &x, 0.25, Some(&mut draws)).unwrap() - &x).unwrap();
        let rows = y.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        let mut dropped = 0;
        for row in &rows {
            let first = row[0];
            assert!(
                row.iter().all(|&v| v == first),
                "a sample is dropped or kept whole"
            );
            if first == 0.0 {
                dropped += 1;
            } else {
                assert!(
                    (first - 1.0 / 0.75).abs() < 1e-6,
                    "kept samples scale by 1/keep"
                );
            }
        }
        assert!(
            dropped > 0 && dropped < 64,
            "64 draws at rate 0.25 drop some, not all"
        );
    }

    #[test]
    fn drop_path_is_identity_without_rng_or_at_rate_zero() {
        let x = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((4, 3))
            .unwrap();
        let mut rng = TrainRng::from_seed(3);
        let before = rng.state();
        let twice = (&x * 2.0).unwrap().to_vec2::<f32>().unwrap();
        let y = add_dropped_path(
            &x,
            &x,
            0.0,
            Some(&mut SampleDraws::new(&mut rng, Part::WHOLE, 4)),
        )
        .unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), twice);
        assert_eq!(rng.state(), before, "rate 0 draws nothing");
        let y = add_dropped_path(&x, &x, 0.5, None).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), twice);
    }
}
