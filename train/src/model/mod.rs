//! The ViT student (TINYMIM.md, "Models"): patch embedding, class token, fixed sin-cos
//! position embedding, pre-norm blocks with drop path, and the adaptive last block.

mod attention;
mod block;
pub mod fused;
mod layers;
mod params;
mod pos_embed;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

pub use attention::HeadsQkv;
pub use layers::LAYER_NORM_EPS;
pub use params::Param;
pub use pos_embed::sincos_pos_embed;

use crate::config::VitConfig;
use crate::error::{expect_shape, Result, TrainError};
use crate::precision::Precision;
use crate::rng::SampleDraws;
use block::{Block, BlockSpec};
use layers::{LayerNorm, PatchEmbed};
use params::{ParamBuilder, Tracking};

/// Name of the materialised position embedding in exports (not a parameter).
pub const POS_EMBED: &str = "pos_embed";

/// A ViT student whose last block is *adaptive*: same width D, but the teacher's relation
/// head count H (so d = D/H), for distillation against that teacher's relation maps.
///
/// Distillation computes only LN1 and qkv of the last block, so that block's `attn.proj`,
/// `norm2`, `mlp` and the final `norm` never receive a gradient: they keep their initial
/// values and exist so that exports load in timm/MAE code (see
/// [`Student::receives_distillation_gradient`]).
///
/// Cloning is shallow: candle variables are reference-counted, so a clone shares the
/// parameters and sees every update. For an independent copy, build a new student and
/// [`Student::load_weights`] from [`Student::export_tensors`].
#[derive(Clone, Debug)]
pub struct Student {
    config: VitConfig,
    relation_heads: usize,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    params: Vec<Param>,
    precision: Precision,
    init_seed: u64,
}

impl Student {
    /// A freshly initialised student (TINYMIM.md "Init": class token N(0, 0.02), xavier-uniform
    /// linears and patch embedding, zero biases, LayerNorm 1/0), all random values drawn from
    /// `seed`. The last block gets `relation_heads` heads, which must divide `config.dim`.
    pub fn new(
        config: &VitConfig,
        relation_heads: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Student> {
        Student::build(config, relation_heads, seed, device, Tracking::Gradients)
    }

    /// A model for inference only (an online teacher, a probed model, a random-initialised
    /// twin): as [`Student::new`], but its forward records no gradient graph, so intermediates
    /// are freed as it goes. Load trained weights with [`Student::load_weights`].
    pub fn frozen(
        config: &VitConfig,
        relation_heads: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Student> {
        Student::build(config, relation_heads, seed, device, Tracking::Frozen)
    }

    fn build(
        config: &VitConfig,
        relation_heads: usize,
        seed: u64,
        device: &Device,
        tracking: Tracking,
    ) -> Result<Student> {
        config.validate("student")?;
        config.validate_relation_heads(relation_heads)?;
        let d = config.dim;
        let mut pb = ParamBuilder::new(seed, device, tracking);
        let cls_token = pb.normal("cls_token", &[1, 1, d], 0.02)?;
        let patch_embed = PatchEmbed::new(&mut pb, d, config.patch)?;
        let blocks = (0..config.depth)
            .map(|i| {
                let last = i + 1 == config.depth;
                let spec = BlockSpec {
                    dim: d,
                    heads: if last { relation_heads } else { config.heads },
                    mlp_dim: config.mlp_dim,
                    drop_path: if last { 0.0 } else { config.drop_path },
                };
                Block::new(&mut pb, i, &spec)
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::new(&mut pb, "norm", d)?;
        Ok(Student {
            config: config.clone(),
            relation_heads,
            patch_embed,
            cls_token,
            pos_embed: sincos_pos_embed(d, config.grid(), device)?,
            blocks,
            norm,
            params: pb.finish(),
            precision: Precision::F32,
            init_seed: seed,
        })
    }

    /// The seed its initial values were drawn from (an export records it, so that a probe can
    /// rebuild the random-initialised twin).
    pub fn init_seed(&self) -> u64 {
        self.init_seed
    }

    /// The architecture.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Runs the transformer blocks' matrix products (qkv, attention, proj, MLP) in
    /// `precision` from now on; the patch embedding, every norm, softmax and GELU, and the last
    /// block's relation logits stay f32 (see [`Precision`]). New models start in f32.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        for block in &mut self.blocks {
            block.set_precision(precision);
        }
    }

    /// The precision of the matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Heads of the adaptive last block (the relation head count of the targets).
    pub fn relation_heads(&self) -> usize {
        self.relation_heads
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.pos_embed.device()
    }

    /// Every parameter, in timm's state-dict order (the position embedding is not one).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The fixed position embedding `[1, N, D]`.
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// Whether distillation reaches parameter `name`: false for the last block's `attn.proj`,
    /// `norm2` and `mlp` and for the final `norm`, which only the full forward
    /// ([`Student::features`]) uses.
    pub fn receives_distillation_gradient(&self, name: &str) -> bool {
        let last = format!("blocks.{}.", self.config.depth - 1);
        let unused_in_last = ["attn.proj.", "norm2.", "mlp."]
            .iter()
            .any(|part| name.starts_with(&format!("{last}{part}")));
        !(unused_in_last || name.starts_with("norm."))
    }

    /// Overwrites every parameter from `tensors` (timm names; any float dtype, any device).
    /// Every parameter must be present with its shape; `pos_embed`, if present, must have the
    /// shape `[1, N, D]` and is otherwise ignored (it is fixed). Nothing changes unless every
    /// tensor checks out. `origin` names the source in errors.
    pub fn load_weights(&self, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        for name in tensors.keys() {
            if name != POS_EMBED && !self.params.iter().any(|p| &p.name == name) {
                return Err(TrainError::UnexpectedTensor {
                    origin: origin.to_string(),
                    tensor: name.clone(),
                });
            }
        }
        if let Some(pos) = tensors.get(POS_EMBED) {
            expect_shape(
                &format!("{origin}: `{POS_EMBED}`"),
                pos,
                self.pos_embed.dims(),
            )?;
        }
        // Check everything before changing anything, so a bad file leaves the model intact.
        let mut sources = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let t = tensors
                .get(&p.name)
                .ok_or_else(|| TrainError::MissingTensor {
                    origin: origin.to_string(),
                    tensor: p.name.clone(),
                })?;
            expect_shape(&format!("{origin}: `{}`", p.name), t, p.var.dims())?;
            sources.push(t);
        }
        for (p, t) in self.params.iter().zip(sources) {
            // A fresh copy: `Var::set` refuses a source sharing the variable's own storage.
            let value = t.to_dtype(DType::F32)?.to_device(self.device())?.copy()?;
            p.var.set(&value)?;
        }
        Ok(())
    }

    /// Replaces the fixed sin-cos position embedding by `pos_embed` `[1, N, D]` (any float
    /// dtype, any device): for teachers trained with a learned one. A student's stays fixed
    /// (TinyMIM), so its checkpoints never carry another.
    pub fn replace_pos_embed(&mut self, pos_embed: &Tensor, origin: &str) -> Result<()> {
        expect_shape(
            &format!("{origin}: `{POS_EMBED}`"),
            pos_embed,
            self.pos_embed.dims(),
        )?;
        self.pos_embed = pos_embed
            .to_dtype(DType::F32)?
            .to_device(self.device())?
            .detach();
        Ok(())
    }

    /// Parameters plus the materialised `pos_embed` `[1, N, D]`, with timm/MAE names: what an
    /// exported `model.safetensors` holds.
    pub fn export_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        out.insert(1, (POS_EMBED.to_string(), self.pos_embed.clone()));
        out
    }

    /// Pixels `[B, 3, S, S]` (f32, normalised) to tokens `[B, N, D]`: class token first, the
    /// position embedding added to every token.
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let s = self.config.image_size;
        let batch = pixels.dims().first().copied().unwrap_or(0);
        expect_shape("pixels", pixels, &[batch, 3, s, s])?;
        if pixels.dtype() != DType::F32 {
            return Err(TrainError::DType {
                tensor: "pixels".to_string(),
                expected: "f32".to_string(),
                actual: pixels.dtype(),
            });
        }
        let patches = self.patch_embed.forward(pixels)?;
        let cls = self.cls_token.broadcast_as((batch, 1, self.config.dim))?;
        let tokens = Tensor::cat(&[&cls, &patches], 1)?;
        Ok(tokens.broadcast_add(&self.pos_embed)?)
    }

    /// q, k and v `[B, H, N, d]` of the last block (H = relation heads): every block but the
    /// last runs in full, the last only LN1 and qkv. With `rng`, drop path is active.
    pub fn relation_qkv(
        &self,
        pixels: &Tensor,
        mut rng: Option<&mut SampleDraws>,
    ) -> Result<HeadsQkv> {
        let (last, body) = self.blocks.split_last().expect("depth validated positive");
        let mut x = self.embed(pixels)?;
        for block in body {
            x = block.forward(&x, rng.as_deref_mut())?;
        }
        last.qkv(&x)
    }

    /// The two relation logit maps `[B, H, N, N]`: q·kᵀ·d^-½ and v·vᵀ·d^-½ of the last block.
    pub fn relation_logits(
        &self,
        pixels: &Tensor,
        rng: Option<&mut SampleDraws>,
    ) -> Result<(Tensor, Tensor)> {
        self.relation_qkv(pixels, rng)?.relation_logits()
    }

    /// Frozen features for a probe: every block in full (no drop path), then the final
    /// `norm`. Returns the tokens at the two points a probe reads (see [`TokenFeatures`]).
    pub fn features(&self, pixels: &Tensor) -> Result<TokenFeatures> {
        let (last, body) = self.blocks.split_last().expect("depth validated positive");
        let mut x = self.embed(pixels)?;
        for block in body {
            x = block.forward(&x, None)?;
        }
        let adaptive_input = x.clone();
        let x = last.forward(&x, None)?;
        Ok(TokenFeatures {
            adaptive_input,
            final_norm: self.norm.forward(&x)?,
        })
    }
}

/// A student's tokens `[B, N, D]` at the two points a probe reads.
///
/// The relation loss shapes the tokens entering the adaptive block (their LN1 and q/k/v are
/// what it compares); the adaptive block's attention output and MLP and the final norm never
/// receive its gradient, so the final output is a random function of that representation.
#[derive(Clone, Debug)]
pub struct TokenFeatures {
    /// The residual stream entering the adaptive (last) block.
    pub adaptive_input: Tensor,
    /// The output of the final norm (what timm/MAE code calls the features).
    pub final_norm: Tensor,
}

/// The class token `[B, D]` and the mean of the patch tokens `[B, D]` of tokens `[B, N, D]`.
pub fn class_and_mean(tokens: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = tokens.dim(1)?;
    let cls = tokens.narrow(1, 0, 1)?.squeeze(1)?;
    let mean = tokens.narrow(1, 1, n - 1)?.mean(1)?;
    Ok((cls, mean))
}
