//! Student architectures: [`VitConfig`] and the bundled presets (`configs/students/*.toml`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
// The bundled presets, compiled in from `configs/students/` (listed with the teachers' in
// `tinymim_formats::vit`) so the binary needs no data files.
use tinymim_formats::vit::STUDENT_PRESETS as PRESETS;

/// The architecture of a ViT student (see TINYMIM.md, "Models").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Width D of every token.
    pub dim: usize,
    /// Number of blocks, the adaptive last block included.
    pub depth: usize,
    /// Attention heads of every block but the last (the last uses the teacher's head count).
    pub heads: usize,
    /// Hidden width of the MLPs.
    pub mlp_dim: usize,
    /// Patch side in pixels (the patch embedding is a `patch`×`patch` stride-`patch` conv).
    pub patch: usize,
    /// Input side in pixels (square input).
    pub image_size: usize,
    /// Drop-path rate of every block but the last (TinyMIM: 0.1); the last block uses 0.
    pub drop_path: f64,
}

impl VitConfig {
    /// Loads a bundled preset: `vit-tiny`, `vit-small` or `vit-base`.
    pub fn preset(name: &str) -> Result<VitConfig> {
        let (_, text) =
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| TrainError::UnknownPreset {
                    name: name.to_string(),
                    known: Self::preset_names().join(", "),
                })?;
        Self::from_toml_str(text, &format!("preset {name}"))
    }

    /// Names of the bundled presets.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// Reads a config from a TOML file with the fields of [`VitConfig`].
    pub fn from_toml_file(path: &Path) -> Result<VitConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names its source in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<VitConfig> {
        let config: VitConfig = toml::from_str(text).map_err(|e| TrainError::Config {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks the invariants the model relies on; `origin` names the config's source in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let fail = |message: String| {
            Err(TrainError::Config {
                origin: origin.to_string(),
                message,
            })
        };
        for (field, value) in [
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("mlp_dim", self.mlp_dim),
            ("patch", self.patch),
            ("image_size", self.image_size),
        ] {
            if value == 0 {
                return fail(format!("`{field}` must be positive"));
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return fail(format!(
                "`dim` = {} is not divisible by `heads` = {}",
                self.dim, self.heads
            ));
        }
        if !self.dim.is_multiple_of(4) {
            return fail(format!(
                "`dim` = {} must be a multiple of 4 for the 2-D sin-cos position embedding",
                self.dim
            ));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return fail(format!(
                "`image_size` = {} is not a multiple of `patch` = {}",
                self.image_size, self.patch
            ));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return fail(format!(
                "`drop_path` = {} must lie in [0, 1)",
                self.drop_path
            ));
        }
        Ok(())
    }

    /// Checks that the adaptive last block can use `relation_heads` heads (D divisible by it).
    pub fn validate_relation_heads(&self, relation_heads: usize) -> Result<()> {
        if relation_heads == 0 || !self.dim.is_multiple_of(relation_heads) {
            return Err(TrainError::Config {
                origin: "adaptive block".to_string(),
                message: format!(
                    "the student's `dim` = {} is not divisible by the relation head count \
                     {relation_heads} (the teacher's, or --relation-heads); pick a student whose \
                     width they divide, or (qkv, ln1 and ln1-int8 stores) --relation-heads H \
                     dividing both widths",
                    self.dim
                ),
            });
        }
        Ok(())
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Tokens per image N = 1 + grid², the class token included.
    pub fn tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }
}
