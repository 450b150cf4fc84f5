//! Exports a trained student for timm/MAE code: `model.safetensors` with timm key names (the
//! fixed `pos_embed` materialised as `[1, N, D]`) and a `config.json` with the architecture.

use std::path::Path;

use serde_json::json;

use crate::atomic::{save_safetensors, write_atomic};
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
