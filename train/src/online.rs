//! The online-teacher target source (TinyMIM's original set-up, the cache's baseline): a ViT
//! teacher loaded from a timm/MAE-named checkpoint runs in candle on every micro-batch.
//!
//! The teacher is the student model itself, built with depth = the target block (the blocks
//! after it never run), relation heads = the teacher's heads and no drop path: that model's
//! last-block q, k and v are exactly the teacher's target-block q, k and v.
//!
//! The checkpoint's `pos_embed` is used as stored: MAE's fixed sin-cos table or a learned one
//! (timm's supervised ViTs, BEiT-style checkpoints converted to timm names). It must have the
//! input size's token count: position embeddings are not interpolated.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tinymim_formats::{Normalization, TeacherGeometry};

use crate::config::VitConfig;
use crate::data::relation_maps;
use crate::data::DataError;
use crate::error::{Result, TrainError};
use crate::model::{Student, POS_EMBED};

/// What the checkpoint cannot say about the teacher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TeacherOptions {
    /// Attention heads of the teacher (its relation heads).
    pub heads: usize,
    /// Target block, 1-based; `None` = the checkpoint's last block.
    pub target_block: Option<usize>,
    /// Input side in pixels; `None` = from the checkpoint's `pos_embed`.
    pub image_size: Option<usize>,
}

/// A ViT teacher computing relation targets on the training device.
#[derive(Clone, Debug)]
pub struct OnlineTeacher {
    model: Student,
    geometry: TeacherGeometry,
}

impl OnlineTeacher {
    /// Loads a teacher from a timm/MAE-named `.safetensors` file or an MAE `.pth` checkpoint
    /// (its `model` entry), truncated after the target block.
    pub fn load(path: &Path, options: &TeacherOptions, device: &Device) -> Result<OnlineTeacher> {
        let tensors = read_tensors(path, device)?;
        let origin = path.display().to_string();
        let config = infer_config(&tensors, options, path)?;
        let mut model = Student::frozen(&config, options.heads, 0, device)?;
        let wanted: HashMap<String, Tensor> = tensors
            .iter()
            .filter(|(name, _)| model.params().iter().any(|p| &p.name == *name))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        model.load_weights(&wanted, &origin)?;
        if let Some(pos) = tensors.get(POS_EMBED) {
            model.replace_pos_embed(pos, &origin)?;
        }
        let geometry = TeacherGeometry {
            arch: format!("vit-online-{}", config.dim),
            tokens: config.tokens() as u32,
            heads: options.heads as u32,
            dim: config.dim as u32,
            target_block: config.depth as u32,
            patch: config.patch as u32,
            image_size: config.image_size as u32,
            normalization: Normalization::IMAGENET,
        };
        Ok(OnlineTeacher { model, geometry })
    }

    /// The teacher's geometry (what a store written by this teacher would record).
    pub fn geometry(&self) -> &TeacherGeometry {
        &self.geometry
    }

    /// The relation maps `(R_QK, R_VV)`, each `[B, H, N, N]`, of teacher input `pixels`
    /// `[B, 3, S, S]`: no drop path, no gradient.
    pub fn maps(&self, pixels: &Tensor) -> std::result::Result<(Tensor, Tensor), DataError> {
        let heads = self.model.relation_qkv(pixels, None)?;
        relation_maps(&heads)
    }
}

/// All tensors of a safetensors file or of the `model` entry of a PyTorch checkpoint.
fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(bad("no such teacher checkpoint".to_string()));
    }
    let is_pth = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "pth" | "pt" | "bin"));
    if is_pth {
        let list = candle_core::pickle::read_all_with_key(path, Some("model")).map_err(|e| {
            bad(format!(
                "not a PyTorch checkpoint with a `model` entry: {e}"
            ))
        })?;
        list.into_iter()
            .map(|(n, t)| Ok((n, t.to_device(device)?)))
            .collect()
    } else {
        candle_core::safetensors::load(path, device)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))
    }
}

/// The truncated teacher's architecture, read off its tensors' shapes.
fn infer_config(
    tensors: &HashMap<String, Tensor>,
    options: &TeacherOptions,
    path: &Path,
) -> Result<VitConfig> {
    let origin = path.display().to_string();
    let dims = |name: &str| {
        tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| TrainError::MissingTensor {
                origin: origin.clone(),
                tensor: name.to_string(),
            })
    };
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let dim = *dims("cls_token")?.last().unwrap_or(&0);
    let patch = *dims("patch_embed.proj.weight")?.last().unwrap_or(&0);
    let mlp_dim = dims("blocks.0.mlp.fc1.weight")?[0];
    let depth = (0..)
        .take_while(|i| tensors.contains_key(&format!("blocks.{i}.attn.qkv.weight")))
        .count();
    let target = options.target_block.unwrap_or(depth);
    if target == 0 || target > depth {
        return Err(bad(format!(
            "target block {target} does not exist: the teacher has {depth} blocks"
        )));
    }
    let image_size = match (options.image_size, tensors.get(POS_EMBED)) {
        (Some(size), _) => size,
        (None, Some(pos)) => {
            let n = pos.dims().get(1).copied().unwrap_or(0);
            let grid = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
            if grid * grid + 1 != n {
                return Err(bad(format!(
                    "`pos_embed` has {n} tokens, not 1 + a square grid"
                )));
            }
            grid * patch
        }
        (None, None) => {
            return Err(bad(
                "no `pos_embed` to read the input size from; pass --teacher-image-size".to_string(),
            ))
        }
    };
    let config = VitConfig {
        dim,
        depth: target,
        heads: options.heads,
        mlp_dim,
        patch,
        image_size,
        drop_path: 0.0,
    };
    config.validate(&origin)?;
    Ok(config)
}
