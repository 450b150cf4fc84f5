//! A ViT's architecture, from (first to last) command-line flags, an architecture file (a
//! preset `configs/teachers/mae-vit-*.toml`, built in, or a `config.json`: a student's, or
//! the one beside a checkpoint), the built-in preset of the checkpoint's width and depth, and
//! what the checkpoint's tensor shapes say; then checked against the checkpoint.
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
//! Unknown fields are ignored, so a student's `config.json` may carry more. What no flag or file
//! gives is read off the checkpoint: `dim` from `cls_token`, `depth` from the blocks, `mlp_dim`
//! from `blocks.0.mlp.fc1.weight`, `patch` from the patch embedding, `image_size` from the
//! tokens of `pos_embed`, and `heads` from the width ([`heads_for_width`]: the built-in presets'
//! 192/3, 384/6, 768/12, 1024/16).

use std::path::Path;

use serde::Deserialize;

use super::checkpoint::Checkpoint;
use super::error::VitError;
use super::tensors::{block_tensor, TensorAccount};
use crate::{Normalization, TeacherGeometry};

/// The built-in teacher presets (`configs/teachers/`, compiled in): name and TOML text. Each
/// names a target block and the input normalisation besides the architecture.
pub const TEACHER_PRESETS: &[(&str, &str)] = &[
    (
        "mae-vit-large",
        include_str!("../../../configs/teachers/mae-vit-large.toml"),
    ),
    (
        "mae-vit-base",
        include_str!("../../../configs/teachers/mae-vit-base.toml"),
    ),
];

/// The built-in student presets (`configs/students/`, compiled in): name and TOML text, with
/// the student's drop-path rate besides the architecture (`train` reads them).
pub const STUDENT_PRESETS: &[(&str, &str)] = &[
    (
        "vit-tiny",
        include_str!("../../../configs/students/vit-tiny.toml"),
    ),
    (
        "vit-small",
        include_str!("../../../configs/students/vit-small.toml"),
    ),
    (
        "vit-base",
        include_str!("../../../configs/students/vit-base.toml"),
    ),
];

/// The attention heads of the built-in presets (teachers and students) of width `dim` —
/// timm's ViT-Ti/S/B/L: 192/3, 384/6, 768/12, 1024/16 — the head count used when nothing else
/// gives one; `None` for any other width, whose head count must then be given.
pub fn heads_for_width(dim: usize) -> Option<usize> {
    let mut heads = TEACHER_PRESETS
        .iter()
        .chain(STUDENT_PRESETS)
        .filter_map(|(_, text)| toml::from_str::<ArchFile>(text).ok())
        .filter(|p| p.dim == Some(dim))
        .filter_map(|p| p.heads);
    let first = heads.next()?;
    heads.all(|h| h == first).then_some(first)
}

/// What the command line says of the architecture; each field overrides every other source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArchOverrides {
    /// Width D.
    pub dim: Option<usize>,
    /// Blocks in the checkpoint.
    pub depth: Option<usize>,
    /// Relation heads of the target block; also the model's heads where no file gives them.
    pub heads: Option<usize>,
    /// Patch size in pixels.
    pub patch: Option<usize>,
    /// Input side in pixels.
    pub image_size: Option<usize>,
    /// MLP hidden width.
    pub mlp_dim: Option<usize>,
    /// Target block, 1-based.
    pub target_block: Option<usize>,
    /// Architecture name.
    pub arch: Option<String>,
}

/// An architecture file: a TOML preset or a `config.json`.
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
    pub fn preset(name: &str) -> Result<Self, VitError> {
        let (_, text) = TEACHER_PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| VitError::UnknownPreset {
                name: name.to_string(),
                known: TEACHER_PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        toml::from_str(text).map_err(|e| VitError::ArchFile {
            path: format!("<preset {name}>").into(),
            reason: e.to_string(),
        })
    }

    /// The built-in teacher preset whose width and depth are `dim` and `depth`, if exactly one
    /// is.
    pub fn matching_preset(dim: usize, depth: usize) -> Option<Self> {
        let mut matches = TEACHER_PRESETS
            .iter()
            .filter_map(|(name, _)| Self::preset(name).ok())
            .filter(|p| p.dim == Some(dim) && p.depth == Some(depth));
        let first = matches.next()?;
        matches.next().is_none().then_some(first)
    }

    /// Reads a `.json` (`config.json`) or TOML architecture file.
    pub fn load(path: &Path) -> Result<Self, VitError> {
        let fail = |reason: String| VitError::ArchFile {
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

    /// Everything known of `checkpoint`'s architecture besides the command line: `given` (a
    /// preset or file the user named) first, then the `config.json` beside a `.safetensors`
    /// checkpoint, then the built-in preset of its width and depth, then its tensor shapes.
    pub fn describe(checkpoint: &Checkpoint, given: Option<ArchFile>) -> Result<Self, VitError> {
        let mut file = given.unwrap_or_default();
        let path = checkpoint.path();
        let beside = path.with_file_name("config.json");
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        if is_safetensors && beside.is_file() {
            file = file.or(ArchFile::load(&beside)?);
        }
        let shapes = ArchFile::from_shapes(checkpoint);
        if let (Some(dim), Some(depth)) = (shapes.dim, shapes.depth) {
            if let Some(preset) = ArchFile::matching_preset(dim, depth) {
                file = file.or(preset);
            }
        }
        Ok(file.or(shapes))
    }

    /// What the tensor shapes of `checkpoint` say (every field but `heads`, `arch`,
    /// `target_block` and `normalization`).
    pub fn from_shapes(checkpoint: &Checkpoint) -> Self {
        let last = |name: &str| checkpoint.shape(name).and_then(|s| s.last().copied());
        let patch = last("patch_embed.proj.weight");
        let image_size = checkpoint
            .shape("pos_embed")
            .and_then(|s| s.get(1).copied())
            .and_then(|n| {
                let grid = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
                (grid > 0 && grid * grid + 1 == n).then_some(grid)
            })
            .zip(patch)
            .map(|(grid, patch)| grid * patch);
        let blocks = checkpoint.block_count();
        ArchFile {
            dim: checkpoint.width(),
            depth: (blocks > 0).then_some(blocks),
            mlp_dim: checkpoint
                .shape(&block_tensor(0, "mlp.fc1.weight"))
                .and_then(|s| s.first().copied()),
            patch,
            image_size,
            ..ArchFile::default()
        }
    }

    /// Field by field, `self`'s value where it has one, else `other`'s.
    pub fn or(self, other: ArchFile) -> Self {
        ArchFile {
            arch: self.arch.or(other.arch),
            dim: self.dim.or(other.dim),
            depth: self.depth.or(other.depth),
            heads: self.heads.or(other.heads),
            mlp_dim: self.mlp_dim.or(other.mlp_dim),
            patch: self.patch.or(other.patch),
            image_size: self.image_size.or(other.image_size),
            target_block: self.target_block.or(other.target_block),
            normalization: self.normalization.or(other.normalization),
        }
    }
}

/// A resolved, self-consistent ViT architecture and target block.
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
    /// Input normalisation the model expects.
    pub normalization: Normalization,
}

impl VitArch {
    /// Combines the command line (first) with an architecture file (second) and checks
    /// consistency. The model's heads are the file's, else `flags.heads`, else
    /// [`heads_for_width`]; the relation heads are `flags.heads`, else the model's.
    pub fn resolve(flags: &ArchOverrides, file: &ArchFile) -> Result<Self, VitError> {
        let need = |value: Option<usize>, field: &'static str| {
            value.ok_or(VitError::MissingField { field })
        };
        let dim = need(flags.dim.or(file.dim), "dim")?;
        let depth = need(flags.depth.or(file.depth), "depth")?;
        let heads = need(file.heads.or(flags.heads).or(heads_for_width(dim)), "heads")?;
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
            patch: need(flags.patch.or(file.patch), "patch")?,
            image_size: need(flags.image_size.or(file.image_size), "image_size")?,
            target_block: flags.target_block.or(file.target_block).unwrap_or(depth),
            normalization: file.normalization.unwrap_or(Normalization::IMAGENET),
        };
        arch.validate()?;
        Ok(arch)
    }

    fn validate(&self) -> Result<(), VitError> {
        let bad = |m: String| Err(VitError::InvalidArch(m));
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
                "dim {} is not divisible by the relation heads {}",
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

    /// The geometry recorded for a teacher of this architecture.
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

    /// Every checkpoint tensor a teacher truncated at the target block uses, with its expected
    /// shape: the stem, the blocks before the target in full, and the target block's LN1 and
    /// qkv.
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

    /// Checks the checkpoint against this architecture: its number of blocks, the presence and
    /// shape of every tensor the truncated teacher uses, and that every tensor is either the
    /// ViT's or ignorable ([`TensorAccount`]); returns the account for the log.
    pub fn check(&self, checkpoint: &Checkpoint) -> Result<TensorAccount, VitError> {
        let account = TensorAccount::of(checkpoint.names());
        if !account.unknown.is_empty() {
            return Err(VitError::UnknownTensors {
                path: checkpoint.path().to_path_buf(),
                count: account.unknown.len(),
                names: account.unknown.iter().take(8).cloned().collect(),
            });
        }
        let blocks = checkpoint.block_count();
        if blocks != self.depth {
            return Err(VitError::DepthMismatch {
                path: checkpoint.path().to_path_buf(),
                expected: self.depth,
                found: blocks,
            });
        }
        let summary = self.summary();
        for (name, shape) in self.used_tensors() {
            checkpoint.expect_shape(&name, &shape, &summary)?;
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ArchOverrides {
        ArchOverrides {
            dim: Some(64),
            depth: Some(4),
            heads: Some(4),
            patch: Some(16),
            image_size: Some(64),
            ..ArchOverrides::default()
        }
    }

    #[test]
    fn presets_parse_and_match_the_mae_models() {
        let large = VitArch::resolve(
            &ArchOverrides::default(),
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
            &ArchOverrides::default(),
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
            &ArchOverrides {
                heads: Some(16),
                ..ArchOverrides::default()
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
            &ArchOverrides {
                dim: None,
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`dim`") && err.contains("flag"), "{err}");
        let err = VitArch::resolve(
            &ArchOverrides {
                heads: Some(5),
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not divisible by heads 5"), "{err}");
        let err = VitArch::resolve(
            &ArchOverrides {
                target_block: Some(5),
                ..flags()
            },
            &ArchFile::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("target block 5"), "{err}");
        let err = VitArch::resolve(
            &ArchOverrides {
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
            &ArchOverrides {
                target_block: Some(3),
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

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../extract/tests/fixtures/mae_tiny/mae_tiny.pth")
    }

    #[test]
    fn the_shapes_give_all_but_the_heads_and_the_width_table_gives_those() {
        let checkpoint = Checkpoint::open(&fixture()).unwrap();
        let file = ArchFile::describe(&checkpoint, None).unwrap();
        assert_eq!(
            (
                file.dim,
                file.depth,
                file.mlp_dim,
                file.patch,
                file.image_size
            ),
            (Some(64), Some(4), Some(256), Some(16), Some(64))
        );
        // Width 64 is no standard ViT's: the heads must be given.
        let err = VitArch::resolve(&ArchOverrides::default(), &file).unwrap_err();
        assert!(
            matches!(err, VitError::MissingField { field: "heads" }),
            "{err}"
        );
        let arch = VitArch::resolve(
            &ArchOverrides {
                heads: Some(4),
                ..ArchOverrides::default()
            },
            &file,
        )
        .unwrap();
        assert_eq!(
            (arch.heads, arch.relation_heads, arch.target_block),
            (4, 4, 4)
        );
        assert_eq!(arch.check(&checkpoint).unwrap().model, 54);
        assert_eq!(
            [192, 384, 768, 1024, 1280, 512].map(heads_for_width),
            [Some(3), Some(6), Some(12), Some(16), None, None]
        );
    }

    /// The fixture's tensors plus `extra`, as a `.safetensors` in `dir`, with a `config.json`
    /// beside it holding `config` when given.
    fn variant(
        dir: &Path,
        extra: &[(&str, Vec<usize>)],
        config: Option<&str>,
    ) -> std::path::PathBuf {
        let checkpoint = Checkpoint::open(&fixture()).unwrap();
        let mut tensors: std::collections::HashMap<String, candle_core::Tensor> = checkpoint
            .names()
            .map(|n| (n.to_string(), checkpoint.tensor(n).unwrap()))
            .collect();
        for (name, shape) in extra {
            let t = candle_core::Tensor::ones(
                shape.as_slice(),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap();
            tensors.insert(name.to_string(), t);
        }
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        if let Some(text) = config {
            std::fs::write(dir.join("config.json"), text).unwrap();
        }
        path
    }

    #[test]
    fn decoder_tensors_are_accounted_as_ignored_and_layerscale_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let flags = ArchOverrides {
            heads: Some(4),
            ..ArchOverrides::default()
        };
        let mae = variant(
            dir.path(),
            &[
                ("decoder_embed.weight", vec![32, 64]),
                ("mask_token", vec![1, 1, 32]),
            ],
            None,
        );
        let checkpoint = Checkpoint::open(&mae).unwrap();
        let arch =
            VitArch::resolve(&flags, &ArchFile::describe(&checkpoint, None).unwrap()).unwrap();
        let account = arch.check(&checkpoint).unwrap();
        assert_eq!(
            account.ignored_summary().as_deref(),
            Some("ignored 2 tensors: the MAE decoder (2)")
        );

        let layerscale = variant(
            dir.path(),
            &[
                ("blocks.0.ls1.gamma", vec![64]),
                ("blocks.0.ls2.gamma", vec![64]),
            ],
            None,
        );
        let checkpoint = Checkpoint::open(&layerscale).unwrap();
        let err = arch.check(&checkpoint).unwrap_err().to_string();
        assert!(
            err.contains("blocks.0.ls1.gamma, blocks.0.ls2.gamma") && err.contains("LayerScale"),
            "{err}"
        );
    }

    #[test]
    fn a_config_json_beside_a_safetensors_comes_before_the_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = variant(
            dir.path(),
            &[],
            Some(r#"{"num_heads": 2, "target_block": 2}"#),
        );
        let checkpoint = Checkpoint::open(&path).unwrap();
        let file = ArchFile::describe(&checkpoint, None).unwrap();
        let arch = VitArch::resolve(&ArchOverrides::default(), &file).unwrap();
        assert_eq!((arch.dim, arch.heads, arch.target_block), (64, 2, 2));
        // A preset the user names comes first.
        let given: ArchFile = toml::from_str("heads = 8").unwrap();
        let file = ArchFile::describe(&checkpoint, Some(given)).unwrap();
        assert_eq!(
            VitArch::resolve(&ArchOverrides::default(), &file)
                .unwrap()
                .heads,
            8
        );
    }
}
