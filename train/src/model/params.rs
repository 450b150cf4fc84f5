//! The student's named parameters and their seeded initialisation (TINYMIM.md, "Init").

use candle_core::{DType, Device, Tensor, Var};
use rand::distr::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Normal;

use crate::error::Result;

/// One trainable tensor with its timm/MAE name.
#[derive(Clone, Debug)]
pub struct Param {
    /// timm/MAE state-dict key, e.g. `blocks.0.attn.qkv.weight`.
    pub name: String,
    /// The tensor; layers hold clones of it, so `Var::set` updates the model in place.
    pub var: Var,
}

/// Whether a model's forward records the graph that `backward` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracking {
    /// Layers hold the variables themselves: a forward records its graph (training).
    Gradients,
    /// Layers hold detached views of the variables (same storage, so loading weights still
    /// updates them): a forward records nothing and frees intermediates as it goes (a
    /// teacher, a probe).
    Frozen,
}

/// Creates parameters in construction order from one seeded stream and records them by name;
/// hands the layers a tensor of each, tracked or not.
pub(crate) struct ParamBuilder<'a> {
    rng: ChaCha8Rng,
    device: &'a Device,
    tracking: Tracking,
    params: Vec<Param>,
}

impl<'a> ParamBuilder<'a> {
    /// A builder drawing every random initial value from `seed`.
    pub fn new(seed: u64, device: &'a Device, tracking: Tracking) -> Self {
        ParamBuilder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
            tracking,
            params: Vec::new(),
        }
    }

    /// A weight of shape `shape`, xavier-uniform over its `(shape[0], rest)` matrix view:
    /// U(−a, a) with a = √(6 / (fan_in + fan_out)). For a conv kernel `[D, 3, p, p]` this is
    /// the `(D, 3·p·p)` view MAE initialises the patch embedding on.
    pub fn xavier_uniform(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let fan_out = shape[0];
        let fan_in: usize = shape[1..].iter().product();
        let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let dist = Uniform::new_inclusive(-a, a).expect("finite, ordered bounds");
        let values = (0..fan_in * fan_out)
            .map(|_| dist.sample(&mut self.rng) as f32)
            .collect();
        self.push(name, Tensor::from_vec(values, shape, self.device)?)
    }

    /// A tensor of shape `shape` drawn from N(0, std²).
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f64) -> Result<Tensor> {
        let dist = Normal::new(0.0, std).expect("positive, finite std");
        let values = (0..shape.iter().product())
            .map(|_| dist.sample(&mut self.rng) as f32)
            .collect();
        self.push(name, Tensor::from_vec(values, shape, self.device)?)
    }

    /// A tensor filled with `value` (biases 0, LayerNorm weights 1).
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f64) -> Result<Tensor> {
        let t = (Tensor::ones(shape, DType::F32, self.device)? * value)?;
        self.push(name, t)
    }

    fn push(&mut self, name: &str, tensor: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&tensor)?;
        let held = match self.tracking {
            Tracking::Gradients => var.as_tensor().clone(),
            Tracking::Frozen => var.as_detached_tensor(),
        };
        self.params.push(Param {
            name: name.to_string(),
            var,
        });
        Ok(held)
    }

    /// The parameters in construction order.
    pub fn finish(self) -> Vec<Param> {
        self.params
    }
}
