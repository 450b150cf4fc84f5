//! Exports a trained student for timm/MAE code: `model.safetensors` with timm key names (the
//! fixed `pos_embed` materialised as `[1, N, D]`) and a `config.json` with the architecture;
//! and reads an export back (a probed or evaluated model, with its random-initialised twin).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use serde_json::json;
use tinymim_formats::vit::Checkpoint;

use crate::atomic::{save_safetensors, write_atomic};
use crate::config::VitConfig;
use crate::error::{Result, TrainError};
use crate::model::{Student, LAYER_NORM_EPS};

/// File name of the exported weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the exported architecture.
pub const CONFIG_FILE: &str = "config.json";

/// Writes [`WEIGHTS_FILE`] and [`CONFIG_FILE`] into `dir` (created if missing), each
/// atomically.
pub fn export_student(dir: &Path, student: &Student) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    save_safetensors(&dir.join(WEIGHTS_FILE), student.export_tensors(), None)?;
    let config = serde_json::to_vec_pretty(&export_config(student)).expect("JSON value serialises");
    write_atomic(&dir.join(CONFIG_FILE), &config)
}

/// The `config.json` of an export, including the caveat about the adaptive last block.
pub fn export_config(student: &Student) -> serde_json::Value {
    let c = student.config();
    let last = c.depth - 1;
    json!({
        "format": "tinymim-student",
        "architecture": "vit",
        "dim": c.dim,
        "depth": c.depth,
        "heads": c.heads,
        "mlp_dim": c.mlp_dim,
        "patch": c.patch,
        "image_size": c.image_size,
        "tokens": c.tokens(),
        "drop_path": c.drop_path,
        "relation_heads": student.relation_heads(),
        "init_seed": student.init_seed(),
        "layer_norm_eps": LAYER_NORM_EPS,
        "activation": "gelu (exact erf)",
        "qkv_bias": true,
        "class_token": true,
        "pos_embed": "fixed 2-D sin-cos, materialised in model.safetensors",
        "relation_block_note": format!(
            "blocks.{last} was distilled with {} relation heads of width {} (the teacher's head \
             count), not {} heads; only its norm1 and attn.qkv were trained. Its attn.proj, \
             norm2, mlp and the final norm never received a gradient and hold their initial \
             values. Fine-tune with {} heads in blocks 0..{last} and either head count in \
             blocks.{last}.",
            student.relation_heads(),
            c.dim / student.relation_heads(),
            c.heads,
            c.heads,
        ),
    })
}

/// The fields of an export's `config.json` the probe needs.
#[derive(Deserialize)]
struct ExportedConfig {
    dim: usize,
    depth: usize,
    heads: usize,
    mlp_dim: usize,
    patch: usize,
    image_size: usize,
    relation_heads: usize,
    #[serde(default)]
    init_seed: Option<u64>,
}

/// Loads an exported student (weights + the `config.json` beside them) and the seed its
/// initial values were drawn from, when the export records it.
pub fn load_exported(model: &Path, device: &Device) -> Result<(Student, Option<u64>)> {
    let config_path = model.with_file_name(CONFIG_FILE);
    let bad = |path: &Path, message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        bad(
            &config_path,
            format!("cannot read the export's config: {e}"),
        )
    })?;
    let c: ExportedConfig = serde_json::from_str(&text)
        .map_err(|e| bad(&config_path, format!("not a tinymim export config: {e}")))?;
    let config = VitConfig {
        dim: c.dim,
        depth: c.depth,
        heads: c.heads,
        mlp_dim: c.mlp_dim,
        patch: c.patch,
        image_size: c.image_size,
        drop_path: 0.0,
    };
    let student = Student::frozen(&config, c.relation_heads, c.init_seed.unwrap_or(0), device)?;
    let checkpoint = Checkpoint::open(model)?;
    let tensors: HashMap<String, Tensor> = checkpoint
        .names()
        .map(|name| {
            Ok((
                name.to_string(),
                checkpoint.tensor(name)?.to_device(device)?,
            ))
        })
        .collect::<Result<_>>()?;
    student.load_weights(&tensors, &model.display().to_string())?;
    Ok((student, c.init_seed))
}

/// An exported student, its random-initialised twin (same architecture, initialised from
/// `twin_seed`, else the seed the export records, with zero steps) and that seed.
pub fn load_with_twin(
    model: &Path,
    device: &Device,
    twin_seed: Option<u64>,
) -> Result<(Student, Student, u64)> {
    let (student, recorded) = load_exported(model, device)?;
    let seed = twin_seed
        .or(recorded)
        .ok_or_else(|| TrainError::Checkpoint {
            path: model.with_file_name(CONFIG_FILE),
            message: "the export records no init_seed (it predates the field); pass --twin-seed \
                  with the run's --seed"
                .to_string(),
        })?;
    let twin = Student::frozen(student.config(), student.relation_heads(), seed, device)?;
    Ok((student, twin, seed))
}
