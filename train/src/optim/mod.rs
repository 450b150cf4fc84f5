//! AdamW with TinyMIM's parameter groups and a state that checkpoints can save and restore.
//!
//! `candle_nn::AdamW` applies one weight decay to every variable and keeps its moments
//! private, so it can neither skip biases nor resume exactly; this one does both.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{expect_shape, Result, TrainError};
use crate::grads::Gradients;
use crate::model::Param;

mod fused;

/// AdamW's constants (the learning rate comes from the schedule at every step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay of the decayed group.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// TinyMIM's: betas (0.9, 0.95), eps 1e-8, weight decay 0.05.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// The optimiser state of one parameter.
#[derive(Clone, Debug)]
pub struct Moments {
    /// First moment (running mean of gradients).
    pub m: Tensor,
    /// Second moment (running mean of squared gradients).
    pub v: Tensor,
    /// Updates applied to this parameter so far (bias correction uses it).
    pub step: u64,
}

/// AdamW (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW` update) over a student's
/// parameters, with weight decay only on the group [`AdamW::decays`] selects.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimiser (no moments yet) over `params`.
    pub fn new(params: &[Param], config: AdamWConfig) -> AdamW {
        AdamW {
            config,
            params: params.to_vec(),
            state: BTreeMap::new(),
        }
    }

    /// An optimiser resuming from saved moments; every entry must name one of `params` and
    /// match its shape. `origin` names the source in errors.
    pub fn with_state(
        params: &[Param],
        config: AdamWConfig,
        state: BTreeMap<String, Moments>,
        origin: &str,
    ) -> Result<AdamW> {
        for (name, moments) in &state {
            let param = params.iter().find(|p| &p.name == name).ok_or_else(|| {
                TrainError::UnexpectedTensor {
                    origin: origin.to_string(),
                    tensor: format!("optimiser moments of `{name}`"),
                }
            })?;
            let dims = param.var.dims();
            expect_shape(
                &format!("{origin}: first moment of `{name}`"),
                &moments.m,
                dims,
            )?;
            expect_shape(
                &format!("{origin}: second moment of `{name}`"),
                &moments.v,
                dims,
            )?;
        }
        Ok(AdamW {
            config,
            params: params.to_vec(),
            state,
        })
    }

    /// TinyMIM's groups (timm's `add_weight_decay`): no decay for biases and other 1-D
    /// parameters (LayerNorm weights); every other parameter, the class token `[1, 1, D]`
    /// included, is decayed. The fixed position embedding is not a parameter at all.
    pub fn decays(name: &str, dims: &[usize]) -> bool {
        dims.len() > 1 && !name.ends_with(".bias")
    }

    /// The constants.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The moments of every parameter updated so far, by name.
    pub fn state(&self) -> &BTreeMap<String, Moments> {
        &self.state
    }

    /// One update at learning rate `lr`. Parameters without a gradient in `grads` are left
    /// alone, moments and step count included:
    /// p ← p·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    /// p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps).
    ///
    /// f32 parameters on the CPU are updated in place, moments included (a clone of this
    /// optimiser, like a clone of the student's variables, shares them); elsewhere the moments
    /// are new tensors and the parameter is set from the composite ops' result.
    pub fn step(&mut self, grads: &Gradients, lr: f64) -> Result<()> {
        let c = &self.config;
        for param in &self.params {
            let Some(g) = grads.get(&param.name) else {
                continue;
            };
            let p = param.var.as_detached_tensor();
            let moments = match self.state.remove(&param.name) {
                Some(m) => m,
                None => Moments {
                    m: p.zeros_like()?,
                    v: p.zeros_like()?,
                    step: 0,
                },
            };
            let step = moments.step + 1;
            let bias1 = 1.0 - c.beta1.powi(step as i32);
            let bias2 = 1.0 - c.beta2.powi(step as i32);
            let wd = if Self::decays(&param.name, p.dims()) {
                c.weight_decay
            } else {
                0.0
            };
            let (m, v) = if fused::applies(&[&p, g, &moments.m, &moments.v]) {
                let update = fused::Update {
                    beta1: c.beta1 as f32,
                    beta2: c.beta2 as f32,
                    decay: (1.0 - lr * wd) as f32,
                    step_size: (lr / bias1) as f32,
                    sqrt_bias2: bias2.sqrt() as f32,
                    eps: c.eps as f32,
                };
                fused::update(&p, g, &moments.m, &moments.v, update)?;
                (moments.m, moments.v)
            } else {
                let m = ((&moments.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                let v = ((&moments.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((v.sqrt()? / bias2.sqrt())? + c.eps)?;
                let update = ((&m / denom)? * (lr / bias1))?;
                let decayed = (&p * (1.0 - lr * wd))?;
                param.var.set(&(decayed - update)?)?;
                (m, v)
            };
            self.state
                .insert(param.name.clone(), Moments { m, v, step });
        }
        Ok(())
    }
}
