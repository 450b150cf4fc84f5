//! Teacher configs (`configs/teachers/*.toml`): how to find the target block's q, k and v in a
//! third-party ONNX ViT, and the geometry the store records.
//!
//! ```toml
//! arch = "dinov2-small"
//! input = "input_image"          # the pixel input, [B, 3, S, S] float32
//! image_size = 224
//! patch = 14
//! tokens = 257                   # N, class token (and any register tokens) included
//! dim = 384
//! heads = 6
//! target_block = 12              # 1-based
//! normalization = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }
//!
//! [tensors]
//! layout = "bnd"                 # q/k/v are [B, N, D] before the head split; or "bhnd"
//! q = "…/query/Add_output_0"
//! k = "…/key/Add_output_0"
//! v = "…/value/Add_output_0"
//! ln1 = "…/norm1/Add_1_output_0" # optional: the block's normalised input [B, N, D]
//!
//! [qkv]                          # optional: the block's projection, for the ln1 encoding
//! weight_layout = "in_out"       # MatMul weights [D_in, D_out]; "out_in" for Linear/Gemm
//! q_weight = "…"                 # or one fused `weight` [3D, D] (out_in) / [D, 3D] (in_out)
//! k_weight = "…"
//! v_weight = "…"
//! q_bias = "…"                   # or one fused `bias` [3D]
//! k_bias = "…"
//! v_bias = "…"
//! ```

use std::path::Path;

use serde::Deserialize;
use tinymim_formats::{Normalization, TeacherGeometry};

use super::TeacherError;

/// How q, k and v tensors are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QkvLayout {
    /// `[B, N, D]`: before the head split (head h is channels `[h·d, (h+1)·d)`).
    Bnd,
    /// `[B, H, N, d]`: after the head split.
    Bhnd,
}

/// How a projection weight initializer is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightLayout {
    /// `[D_in, D_out]`, as a `MatMul` with the activations on the left uses it.
    InOut,
    /// `[D_out, D_in]`, as `torch.nn.Linear` and `Gemm(transB=1)` store it.
    OutIn,
}

/// Names of the tensors that become graph outputs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorNames {
    /// Layout of q, k and v.
    pub layout: QkvLayout,
    /// Queries of the target block.
    pub q: String,
    /// Keys of the target block.
    pub k: String,
    /// Values of the target block.
    pub v: String,
    /// The target block's normalised input `[B, N, D]` (needed for the `ln1` encoding).
    pub ln1: Option<String>,
    /// The target block's R_QK `[B, H, N, N]` (softmax over keys), when the graph computes it.
    /// With `r_vv` too, the `maps` encoding stores the graph's own maps (computed where the
    /// teacher runs, on the GPU under CUDA) instead of forming them from q, k, v on the host.
    #[serde(default)]
    pub r_qk: Option<String>,
    /// The target block's R_VV `[B, H, N, N]`, when the graph computes it (see `r_qk`).
    #[serde(default)]
    pub r_vv: Option<String>,
}

/// Initializer names of the target block's qkv projection (needed for the `ln1` encoding).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QkvInitializers {
    /// Layout of the weight initializers.
    pub weight_layout: Option<WeightLayout>,
    /// One fused weight for q, k and v.
    pub weight: Option<String>,
    /// One fused bias `[3D]`.
    pub bias: Option<String>,
    /// Separate weights of q, k and v.
    pub q_weight: Option<String>,
    /// Key weight.
    pub k_weight: Option<String>,
    /// Value weight.
    pub v_weight: Option<String>,
    /// Separate biases `[D]` of q, k and v.
    pub q_bias: Option<String>,
    /// Key bias.
    pub k_bias: Option<String>,
    /// Value bias.
    pub v_bias: Option<String>,
}

/// A teacher config as written in TOML.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Free-form architecture name recorded in the store.
    pub arch: String,
    /// Name of the pixel input.
    pub input: String,
    /// Input side in pixels.
    pub image_size: u32,
    /// The graph declares a fixed input size but computes its position embedding from the
    /// input's shape (Hugging Face's DINOv2 interpolates it), so it runs at other sizes too:
    /// extract declares the input's height and width symbolic and feeds `image_size`. Set it
    /// only for such graphs; a graph with a fixed-size embedding then fails to run.
    #[serde(default)]
    pub any_input_size: bool,
    /// Patch size in pixels.
    pub patch: u32,
    /// Tokens N per view.
    pub tokens: u32,
    /// Width D of the target block.
    pub dim: u32,
    /// Relation heads H.
    pub heads: u32,
    /// Target block, 1-based.
    pub target_block: u32,
    /// Input normalisation.
    pub normalization: Normalization,
    /// The q/k/v (and ln1) tensors.
    pub tensors: TensorNames,
    /// The qkv projection's initializers.
    pub qkv: Option<QkvInitializers>,
    /// Tensors `[B, N, D]` that `train probe --teacher` reads the teacher's own features from,
    /// in order (each block's output and the final norm, say). Without any, a probe reads
    /// `tensors.ln1`, the target block's normalised input.
    #[serde(default)]
    pub features: Vec<FeatureTensor>,
}

/// One named tensor of teacher features `[B, N, D]` (class token first).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureTensor {
    /// What the probe's report calls it ("block 6", "final norm").
    pub name: String,
    /// The tensor in the graph.
    pub tensor: String,
}

impl TeacherConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, TeacherError> {
        let text = std::fs::read_to_string(path).map_err(|source| TeacherError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TeacherError> {
        let config: TeacherConfig = toml::from_str(text).map_err(|e| TeacherError::Config {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
            field: e.span().map(|s| text[s].to_string()).unwrap_or_default(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), TeacherError> {
        let bad = |field: &str, reason: String| TeacherError::Config {
            path: path.to_path_buf(),
            reason,
            field: field.to_string(),
        };
        for (field, value) in [
            ("image_size", self.image_size),
            ("patch", self.patch),
            ("tokens", self.tokens),
            ("dim", self.dim),
            ("heads", self.heads),
            ("target_block", self.target_block),
        ] {
            if value == 0 {
                return Err(bad(field, format!("`{field}` must be positive")));
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(bad(
                "heads",
                format!(
                    "heads = {} does not divide dim = {}: the head width would not be whole",
                    self.heads, self.dim
                ),
            ));
        }
        if self.normalization.std.iter().any(|s| *s <= 0.0) {
            return Err(bad("normalization", "every std must be positive".into()));
        }
        if let Some(qkv) = &self.qkv {
            qkv.sources().map_err(|reason| bad("qkv", reason))?;
        }
        Ok(())
    }

    /// The geometry recorded in the store.
    pub fn geometry(&self) -> TeacherGeometry {
        TeacherGeometry {
            arch: self.arch.clone(),
            tokens: self.tokens,
            heads: self.heads,
            dim: self.dim,
            target_block: self.target_block,
            patch: self.patch,
            image_size: self.image_size,
            normalization: self.normalization,
        }
    }
}

/// Where the qkv projection's weight and bias come from.
#[derive(Clone, Debug, PartialEq)]
pub enum QkvSource {
    /// One fused weight and bias.
    Fused {
        /// Weight initializer.
        weight: String,
        /// Bias initializer.
        bias: String,
        /// Weight layout.
        layout: WeightLayout,
    },
    /// Separate q, k and v weights and biases.
    Split {
        /// q, k, v weight initializers.
        weights: [String; 3],
        /// q, k, v bias initializers.
        biases: [String; 3],
        /// Weight layout.
        layout: WeightLayout,
    },
}

impl QkvInitializers {
    /// The fused or split source these names describe; a message naming the fields when they
    /// are mixed or incomplete.
    pub fn sources(&self) -> Result<QkvSource, String> {
        let layout = self
            .weight_layout
            .ok_or("`weight_layout` is required (\"in_out\" or \"out_in\")")?;
        let split = [
            &self.q_weight,
            &self.k_weight,
            &self.v_weight,
            &self.q_bias,
            &self.k_bias,
            &self.v_bias,
        ];
        match (&self.weight, &self.bias) {
            (Some(weight), Some(bias)) if split.iter().all(|s| s.is_none()) => {
                Ok(QkvSource::Fused {
                    weight: weight.clone(),
                    bias: bias.clone(),
                    layout,
                })
            }
            (None, None) if split.iter().all(|s| s.is_some()) => {
                let s: Vec<String> = split
                    .iter()
                    .map(|s| s.as_deref().unwrap_or("").to_string())
                    .collect();
                Ok(QkvSource::Split {
                    weights: [s[0].clone(), s[1].clone(), s[2].clone()],
                    biases: [s[3].clone(), s[4].clone(), s[5].clone()],
                    layout,
                })
            }
            _ => Err(
                "name either `weight` and `bias` (fused), or all of `q_weight`, `k_weight`, \
                      `v_weight`, `q_bias`, `k_bias`, `v_bias` (split)"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DINOV2: &str = include_str!("../../../configs/teachers/dinov2-small.toml");

    #[test]
    fn the_shipped_dinov2_config_parses_with_split_qkv_initializers() {
        let c = TeacherConfig::parse(DINOV2, Path::new("dinov2-small.toml")).unwrap();
        assert_eq!(
            (c.tokens, c.dim, c.heads, c.target_block),
            (257, 384, 6, 12)
        );
        assert_eq!(c.tensors.layout, QkvLayout::Bnd);
        assert!(matches!(
            c.qkv.unwrap().sources().unwrap(),
            QkvSource::Split {
                layout: WeightLayout::InOut,
                ..
            }
        ));
    }

    #[test]
    fn heads_that_do_not_divide_dim_are_refused_naming_both() {
        let text = DINOV2.replace("heads = 6", "heads = 5");
        let err = TeacherConfig::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("heads = 5") && err.contains("dim = 384"),
            "{err}"
        );
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn unknown_fields_and_mixed_qkv_names_are_refused() {
        let text = DINOV2.replace("patch = 14", "patch = 14\npatches = 3");
        let err = TeacherConfig::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("patches"), "{err}");
        let text = DINOV2.replace("[qkv]", "[qkv]\nweight = \"w\"");
        let err = TeacherConfig::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fused") && err.contains("qkv"), "{err}");
    }
}
