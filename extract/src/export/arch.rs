//! The teacher's ViT architecture: from a preset (`configs/teachers/mae-vit-*.toml`, built in),
//! an architecture file (a TOML preset or a student's `config.json`) and command-line flags,
//! then checked against the checkpoint's tensor shapes.
//!
//! Architecture files use these fields (all optional; flags override them):
//!
//! ```toml
//! arch = "mae-vit-large"   # name recorded in the teacher geometry
//! dim = 1024               # alias: embed_dim
//! depth = 24
//! heads = 16               # attention heads of the blocks before the target; alias: num_heads
//! mlp_dim = 4096           # alias: mlp_hidden_dim; default 4 · dim
//! patch = 16               # alias: patch_size
//! image_size = 224         # alias: img_size
//! target_block = 18        # 1-based; default: the last block
//! normalization = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }
//! ```
//!
//! Unknown fields are ignored, so a student's `config.json` may carry more.

use std::path::Path;

use serde::Deserialize;
use tinymim_formats::{Normalization, TeacherGeometry};

use super::checkpoint::Checkpoint;
use super::error::ExportError;

/// Built-in presets: name and TOML text.
const PRESETS: &[(&str, &str)] = &[
    (
        "mae-vit-large",
        include_str!("../../../configs/teachers/mae-vit-large.toml"),
    ),
    (
        "mae-vit-base",
        include_str!("../../../configs/teachers/mae-vit-base.toml"),
    ),
];

/// Architecture flags of `extract teacher`; each overrides the preset or architecture file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ArchArgs {
    /// Width D of the model.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Number of blocks in the checkpoint.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Relation heads H of the target block (d = D / H). Defaults to the model's attention
    /// heads; the blocks before the target always run with the model's own heads, which this
    /// flag supplies only when no preset or architecture file does.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Patch size in pixels.
    #[arg(long)]
    pub patch: Option<usize>,
    /// Input side in pixels (square input).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Hidden width of the MLP (default 4 · dim).
    #[arg(long)]
    pub mlp_dim: Option<usize>,
    /// Target block, 1-based (default: the preset's, else the last block).
    #[arg(long)]
    pub block: Option<usize>,
    /// Architecture name recorded in the teacher geometry (default: the preset's, else `vit`).
    #[arg(long)]
    pub arch: Option<String>,
}

/// An architecture file: a TOML preset or a student's `config.json`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ArchFile {
    #[serde(alias = "architecture")]
    arch: Option<String>,
    #[serde(alias = "embed_dim")]
    dim: Option<usize>,
    depth: Option<usize>,
    #[serde(alias = "num_heads")]
    heads: Option<usize>,
    #[serde(alias = "mlp_hidden_dim")]
    mlp_dim: Option<usize>,
    #[serde(alias = "patch_size")]
    patch: Option<usize>,
    #[serde(alias = "img_size")]
    image_size: Option<usize>,
    target_block: Option<usize>,
    normalization: Option<Normalization>,
}

impl ArchFile {
    /// A built-in preset by name (`mae-vit-large`, `mae-vit-base`).
    pub fn preset(name: &str) -> Result<Self, ExportError> {
        let (_, text) =
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| ExportError::UnknownPreset {
                    name: name.to_string(),
                    known: PRESETS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        toml::from_str(text).map_err(|e| ExportError::ArchFile {
            path: format!("<preset {name}>").into(),
            reason: e.to_string(),
        })
    }

    /// The built-in preset whose width and depth are `dim` and `depth`, if exactly one is.
    pub fn matching_preset(dim: usize, depth: usize) -> Option<Self> {
        let mut matches = PRESETS
            .iter()
            .filter_map(|(name, _)| Self::preset(name).ok())
            .filter(|p| p.dim == Some(dim) && p.depth == Some(depth));
        let first = matches.next()?;
        matches.next().is_none().then_some(first)
    }

    /// Reads a `.json` (student `config.json`) or TOML architecture file.
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        let fail = |reason: String| ExportError::ArchFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
        } else {
            toml::from_str(&text).map_err(|e| fail(e.to_string()))
        }
    }
}

/// A resolved, self-consistent ViT architecture and export target.
#[derive(Clone, Debug, PartialEq)]
pub struct VitArch {
    /// Name recorded in the teacher geometry.
    pub name: String,
    /// Width D.
    pub dim: usize,
    /// Blocks in the checkpoint.
    pub depth: usize,
    /// Attention heads of the blocks before the target block.
    pub heads: usize,
    /// Relation heads H of the target block.
    pub relation_heads: usize,
    /// MLP hidden width.
    pub mlp_dim: usize,
    /// Patch size in pixels.
    pub patch: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Target block, 1-based.
    pub target_block: usize,
    /// Input normalisation the teacher expects.
    pub normalization: Normalization,
}

impl VitArch {
    /// Combines flags (first) with an architecture file (second) and checks consistency.
    pub fn resolve(flags: &ArchArgs, file: &ArchFile) -> Result<Self, ExportError> {
        let need = |value: Option<usize>, field: &'static str, flag: &'static str| {
            value.ok_or(ExportError::MissingField { field, flag })
        };
        let dim = need(flags.dim.or(file.dim), "dim", "dim")?;
        let depth = need(flags.depth.or(file.depth), "depth", "depth")?;
        let heads = need(file.heads.or(flags.heads), "heads", "heads")?;
        let arch = VitArch {
            name: flags
                .arch
                .clone()
                .or(file.arch.clone())
                .unwrap_or_else(|| "vit".into()),
            dim,
            depth,
            heads,
            relation_heads: flags.heads.unwrap_or(heads),
            mlp_dim: flags.mlp_dim.or(file.mlp_dim).unwrap_or(4 * dim),
            patch: need(flags.patch.or(file.patch), "patch", "patch")?,
            image_size: need(
                flags.image_size.or(file.image_size),
                "image_size",
                "image-size",
            )?,
            target_block: flags.block.or(file.target_block).unwrap_or(depth),
            normalization: file.normalization.unwrap_or(Normalization::IMAGENET),
        };
        arch.validate()?;
        Ok(arch)
    }

    fn validate(&self) -> Result<(), ExportError> {
        let bad = |m: String| Err(ExportError::InvalidArch(m));
        for (field, value) in [
            ("dim", self.dim),
            ("depth", self.depth),
            ("heads", self.heads),
            ("relation heads", self.relation_heads),
            ("mlp_dim", self.mlp_dim),
            ("patch", self.patch),
            ("image_size", self.image_size),
        ] {
            if value == 0 {
                return bad(format!("{field} must be positive"));
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return bad(format!(
                "dim {} is not divisible by heads {}",
                self.dim, self.heads
            ));
        }
        if !self.dim.is_multiple_of(self.relation_heads) {
            return bad(format!(
                "dim {} is not divisible by the relation heads {} (--heads)",
                self.dim, self.relation_heads
            ));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return bad(format!(
                "image_size {} is not a multiple of patch {}",
                self.image_size, self.patch
            ));
        }
        if self.target_block == 0 || self.target_block > self.depth {
            return bad(format!(
                "target block {} is outside 1..={} (depth)",
                self.target_block, self.depth
            ));
        }
        Ok(())
    }

    /// Tokens N = 1 + (S / P)².
    pub fn tokens(&self) -> usize {
        let grid = self.image_size / self.patch;
        1 + grid * grid
    }

    /// One-line summary for messages.
    pub fn summary(&self) -> String {
        format!(
            "{} (dim {}, depth {}, heads {}, mlp {}, patch {}, image {})",
            self.name, self.dim, self.depth, self.heads, self.mlp_dim, self.patch, self.image_size
        )
    }

    /// The geometry recorded in the exported teacher's metadata.
    pub fn geometry(&self) -> TeacherGeometry {
        TeacherGeometry {
            arch: self.name.clone(),
            tokens: self.tokens() as u32,
            heads: self.relation_heads as u32,
            dim: self.dim as u32,
            target_block: self.target_block as u32,
            patch: self.patch as u32,
            image_size: self.image_size as u32,
            normalization: self.normalization,
        }
    }

    /// Every checkpoint tensor the truncated teacher uses, with its expected shape: the stem,
    /// the blocks before the target in full, and the target block's LN1 and qkv.
    pub fn used_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, m, p) = (self.dim, self.mlp_dim, self.patch);
        let mut out = vec![
            ("patch_embed.proj.weight".to_string(), vec![d, 3, p, p]),
            ("patch_embed.proj.bias".to_string(), vec![d]),
            ("cls_token".to_string(), vec![1, 1, d]),
            ("pos_embed".to_string(), vec![1, self.tokens(), d]),
        ];
        for i in 0..self.target_block {
            let mut block = vec![
                ("norm1.weight", vec![d]),
                ("norm1.bias", vec![d]),
                ("attn.qkv.weight", vec![3 * d, d]),
                ("attn.qkv.bias", vec![3 * d]),
            ];
            if i + 1 < self.target_block {
                block.extend([
                    ("attn.proj.weight", vec![d, d]),
                    ("attn.proj.bias", vec![d]),
                    ("norm2.weight", vec![d]),
                    ("norm2.bias", vec![d]),
                    ("mlp.fc1.weight", vec![m, d]),
                    ("mlp.fc1.bias", vec![m]),
                    ("mlp.fc2.weight", vec![d, m]),
                    ("mlp.fc2.bias", vec![d]),
                ]);
            }
            out.extend(
                block
                    .into_iter()
                    .map(|(s, shape)| (block_tensor(i, s), shape)),
            );
        }
        out
    }

    /// Checks the checkpoint against this architecture: its number of blocks, and the presence
    /// and shape of every tensor the truncated teacher uses.
    pub fn check(&self, checkpoint: &Checkpoint) -> Result<(), ExportError> {
        let blocks = checkpoint.block_count();
        if blocks != self.depth {
            return Err(ExportError::DepthMismatch {
                path: checkpoint.path().to_path_buf(),
                expected: self.depth,
                found: blocks,
            });
        }
        let summary = self.summary();
        for (name, shape) in self.used_tensors() {
            checkpoint.expect_shape(&name, &shape, &summary)?;
        }
        Ok(())
    }
}

/// The timm/MAE name of a tensor of block `index` (0-based), e.g. `blocks.17.attn.qkv.weight`.
pub fn block_tensor(index: usize, suffix: &str) -> String {
    format!("blocks.{index}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ArchArgs {
        ArchArgs {
            dim: Some(64),
            depth: Some(4),
            heads: Some(4),
            patch: Some(16),
            image_size: Some(64),
            ..ArchArgs::default()
        }
    }

    #[test]
    fn presets_parse_and_match_the_mae_models() {
        let large = VitArch::resolve(
            &ArchArgs::default(),
            &ArchFile::preset("mae-vit-large").unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                large.dim,
                large.depth,
                large.heads,
                large.mlp_dim,
                large.target_block,
                large.tokens()
            ),
            (1024, 24, 16, 4096, 18, 197)
        );
        let base = VitArch::resolve(
            &ArchArgs::default(),
            &ArchFile::preset("mae-vit-base").unwrap(),
        )
        .unwrap();
        assert_eq!(
            (base.dim, base.depth, base.heads, base.target_block),
            (768, 12, 12, 12)
        );
        assert_eq!(base.normalization, Normalization::IMAGENET);
    }

    #[test]
    fn presets_are_matched_by_width_and_depth() {
        let large = ArchFile::matching_preset(1024, 24).unwrap();
        assert_eq!(
            (large.arch.as_deref(), large.target_block),
            (Some("mae-vit-large"), Some(18))
        );
        let base = ArchFile::matching_preset(768, 12).unwrap();
        assert_eq!(base.arch.as_deref(), Some("mae-vit-base"));
        assert!(ArchFile::matching_preset(64, 4).is_none());
        assert!(ArchFile::matching_preset(1024, 12).is_none());
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let err = ArchFile::preset("vit-huge").unwrap_err().to_string();
        assert!(
            err.contains("vit-huge") && err.contains("mae-vit-large"),
            "{err}"
        );
    }

    #[test]
    fn heads_flag_splits_only_the_target_block() {
        let file: ArchFile =
            serde_json::from_str(r#"{"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "img_size": 224}"#)
                .unwrap();
        let arch = VitArch::resolve(
            &ArchArgs {
                heads: Some(16),
                ..ArchArgs::default()
            },
            &file,
        )
        .unwrap();
        assert_eq!(
            (arch.heads, arch.relation_heads, arch.target_block),
            (12, 16, 12)
        );
        assert_eq!(arch.geometry().heads, 16);
        assert_eq!(arch.geometry().head_dim(), 48);
    }

    #[test]
    fn missing_and_inconsistent_fields_are_named() {
        let err = VitArch::resolve(
            &ArchArgs {
                dim: None,
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`dim`") && err.contains("--dim"), "{err}");
        let err = VitArch::resolve(
            &ArchArgs {
                heads: Some(5),
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not divisible by heads 5"), "{err}");
        let err = VitArch::resolve(
            &ArchArgs {
                block: Some(5),
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target block 5"), "{err}");
        let err = VitArch::resolve(
            &ArchArgs {
                image_size: Some(60),
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("image_size 60"), "{err}");
    }

    #[test]
    fn used_tensors_stop_at_the_target_blocks_qkv() {
        let arch = VitArch::resolve(
            &ArchArgs {
                block: Some(3),
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap();
        let names: Vec<String> = arch.used_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"blocks.1.mlp.fc2.bias".to_string()));
        assert!(names.contains(&"blocks.2.attn.qkv.weight".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("blocks.2.attn.proj")
            || n.starts_with("blocks.2.mlp")
            || n.starts_with("blocks.2.norm2")
            || n.starts_with("blocks.3.")
            || n.starts_with("norm.")));
        // 4 stem tensors, 12 per full block, 4 of the target block.
        assert_eq!(names.len(), 4 + 2 * 12 + 4);
    }
}
