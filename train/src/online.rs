//! The online-teacher target source (TinyMIM's original set-up, the cache's baseline): a ViT
//! teacher loaded from a timm/MAE-named checkpoint runs in candle on every micro-batch.
//!
//! The teacher is the student model itself, built with depth = the target block (the blocks
//! after it never run), relation heads = the teacher's heads and no drop path: that model's
//! last-block q, k and v are exactly the teacher's target-block q, k and v.
//!
//! The checkpoint's `pos_embed` is used as stored: MAE's fixed sin-cos table or a learned one
//! (timm's supervised ViTs). It must have the input size's token count: position embeddings
//! are not interpolated.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tinymim_formats::vit::{ArchFile, ArchOverrides, Checkpoint, VitArch, VitError};
use tinymim_formats::TeacherGeometry;

use crate::config::VitConfig;
use crate::data::relation_maps;
use crate::data::DataError;
use crate::error::{Result, TrainError};
use crate::model::{Student, POS_EMBED};

/// What the command line says of the teacher; the rest is read as `extract teacher` reads it
/// ([`tinymim_formats::vit`]): a `config.json` beside a `.safetensors`, the built-in preset of
/// the checkpoint's width and depth, the tensor shapes, the heads of the standard widths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeacherOptions {
    /// Relation heads of the target block (and the teacher's heads where nothing else says).
    pub heads: Option<usize>,
    /// Target block, 1-based; `None` = the preset's, else the checkpoint's last block.
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
    /// (its `model` entry), truncated after the target block. Tensors of MAE's decoder or a
    /// classifier head are listed as ignored on stderr; any tensor that is not a plain ViT's
    /// is refused.
    pub fn load(path: &Path, options: &TeacherOptions, device: &Device) -> Result<OnlineTeacher> {
        let checkpoint = Checkpoint::open(path).map_err(|e| vit_error(path, e))?;
        let overrides = ArchOverrides {
            heads: options.heads,
            target_block: options.target_block,
            image_size: options.image_size,
            ..ArchOverrides::default()
        };
        let arch = ArchFile::describe(&checkpoint, None)
            .and_then(|file| VitArch::resolve(&overrides, &file))
            .map_err(|e| vit_error(path, e))?;
        let account = arch.check(&checkpoint).map_err(|e| vit_error(path, e))?;
        if let Some(ignored) = account.ignored_summary() {
            eprintln!("{}: {ignored}", path.display());
        }
        let origin = path.display().to_string();
        let config = VitConfig {
            dim: arch.dim,
            depth: arch.target_block,
            heads: arch.heads,
            mlp_dim: arch.mlp_dim,
            patch: arch.patch,
            image_size: arch.image_size,
            drop_path: 0.0,
        };
        config.validate(&origin)?;
        let mut model = Student::frozen(&config, arch.relation_heads, 0, device)?;
        let load = |name: &str| -> Result<Tensor> {
            let tensor = checkpoint.tensor(name).map_err(|e| vit_error(path, e))?;
            Ok(tensor.to_device(device)?)
        };
        let weights: HashMap<String, Tensor> = model
            .params()
            .iter()
            .map(|p| Ok((p.name.clone(), load(&p.name)?)))
            .collect::<Result<_>>()?;
        model.load_weights(&weights, &origin)?;
        model.replace_pos_embed(&load(POS_EMBED)?, &origin)?;
        Ok(OnlineTeacher {
            model,
            geometry: arch.geometry(),
        })
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

/// A checkpoint problem as a training error naming the file; an unknown head count asks for
/// `--teacher-heads`.
fn vit_error(path: &Path, error: VitError) -> TrainError {
    let message = match error {
        VitError::MissingField { field: "heads" } => {
            "the teacher's head count is unknown: its width is none of the built-in \
             presets' (192, 384, 768, 1024) and no config.json beside it gives `heads`; pass \
             --teacher-heads H"
        }
        _ => return error.into(),
    };
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}
