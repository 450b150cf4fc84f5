//! The teacher: an ONNX ViT run by ONNX Runtime up to its target block's q, k and v.
//!
//! Two kinds of teacher load the same way:
//!
//! - teachers exported by `extract teacher` follow the contract of
//!   [`tinymim_formats::teacher::contract`] (input `pixels`, outputs `ln1`/`q`/`k`/`v`, the
//!   geometry in the model's metadata) and need no config;
//! - third-party ONNX ViTs come with a [`TeacherConfig`] naming their tensors; those tensors are
//!   made the graph's outputs in memory before ONNX Runtime sees the model.
//!
//! Either way, [`Teacher::load`] runs one all-zero view through the model and checks every
//! output's shape against the geometry, so a wrong tensor name, layout or head count is refused
//! before anything is written.

mod config;
mod graph;

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, ArrayD, ArrayViewD, Ix3, Ix4};
use ort::session::Session;
use ort::value::TensorRef;
use tinymim_formats::teacher::contract;
use tinymim_formats::{Encoding, Hash32, QkvParams, TeacherGeometry};

pub use config::{QkvInitializers, QkvLayout, QkvSource, TeacherConfig, TensorNames, WeightLayout};
pub use graph::{InputInfo, OnnxGraph};

use crate::runtime::{Device, Provider, Runtime, RuntimeError};

/// Why a teacher could not be loaded or run. Every variant names the file, tensor or field.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ONNX model.
    #[error("{path}: not an ONNX model: {reason}")]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What the protobuf parser said.
        reason: String,
    },
    /// A teacher config is malformed or inconsistent.
    #[error("{path}: invalid teacher config (at `{field}`): {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The field (or TOML text) at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A model without the tinymim contract was given without a config.
    #[error(
        "{path} is not a teacher exported by `extract teacher` (no `{key}` metadata); pass \
         --config with a teacher config naming its q, k and v tensors (see configs/teachers/)"
    )]
    NotContract {
        /// The model.
        path: PathBuf,
        /// The metadata key looked for.
        key: &'static str,
    },
    /// Contract metadata that cannot be used.
    #[error("{path}: bad `{key}` metadata: {reason}")]
    BadMetadata {
        /// The model.
        path: PathBuf,
        /// The metadata key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The config (or contract) names a tensor that no node of the graph produces.
    #[error("{model}: no node produces tensor `{tensor}` (named as {role})")]
    MissingTensor {
        /// The model.
        model: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What it was named as (`q`, `tensors.ln1`, …).
        role: String,
    },
    /// The config (or contract) names an initializer the graph does not have.
    #[error("{model}: no initializer `{name}` (named as {role})")]
    MissingInitializer {
        /// The model.
        model: PathBuf,
        /// The initializer name.
        name: String,
        /// What it was named as.
        role: String,
    },
    /// An initializer exists but cannot serve its role.
    #[error("initializer `{name}` ({role}): {reason}")]
    BadInitializer {
        /// The initializer name.
        name: String,
        /// What it was named as.
        role: String,
        /// What is wrong.
        reason: String,
    },
    /// The pixel input is missing or does not match the geometry.
    #[error("{model}: input `{input}`: {reason}")]
    Input {
        /// The model.
        model: PathBuf,
        /// The input name.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// An output's shape disagrees with the geometry.
    #[error(
        "tensor `{tensor}` ({role}) has shape {actual:?}, but the teacher's geometry needs \
         {expected:?} ({why})"
    )]
    Shape {
        /// The tensor name.
        tensor: String,
        /// What it was named as.
        role: String,
        /// The shape the geometry implies.
        expected: Vec<usize>,
        /// The shape the model produced.
        actual: Vec<usize>,
        /// The geometry the expectation comes from.
        why: String,
    },
    /// The teacher cannot produce the asked-for encoding.
    #[error("the {encoding} encoding is not available for {path}: {reason}")]
    Unsupported {
        /// The model.
        path: PathBuf,
        /// The encoding asked for.
        encoding: Encoding,
        /// What is missing.
        reason: String,
    },
    /// ONNX Runtime could not be started.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// ONNX Runtime failed to load or run the model.
    #[error("{path}: ONNX Runtime: {source}")]
    Ort {
        /// The model.
        path: PathBuf,
        /// ONNX Runtime's error.
        #[source]
        source: ort::Error,
    },
}

/// How to run a teacher.
#[derive(Clone, Debug, Default)]
pub struct TeacherOptions {
    /// Where to run it.
    pub device: Device,
    /// Intra-op threads (`None`: ONNX Runtime's default, one per core).
    pub threads: Option<usize>,
    /// Further tensors to fetch with every batch (checks and diagnostics), float32.
    pub extra_outputs: Vec<String>,
    /// Fetch the graph's own relation maps with every batch when it computes them (the teacher
    /// names `r_qk` and `r_vv`; every teacher exported by `extract teacher` does), for the
    /// `maps` encoding. Off, those nodes are pruned from the graph and never run.
    pub relation_maps: bool,
}

/// One batch of teacher outputs, in the layout the encodings need.
#[derive(Clone, Debug)]
pub struct TeacherBatch {
    /// Queries `[B, H, N, d]`.
    pub q: Array4<f32>,
    /// Keys `[B, H, N, d]`.
    pub k: Array4<f32>,
    /// Values `[B, H, N, d]`.
    pub v: Array4<f32>,
    /// The target block's normalised input `[B, N, D]`, when the teacher provides it.
    pub ln1: Option<Array3<f32>>,
    /// The graph's own R_QK and R_VV `[B, H, N, N]`, with [`TeacherOptions::relation_maps`]
    /// and a teacher that computes them.
    pub maps: Option<(Array4<f32>, Array4<f32>)>,
    /// The [`TeacherOptions::extra_outputs`], in order.
    pub extra: Vec<ArrayD<f32>>,
}

impl TeacherBatch {
    /// Views in the batch.
    pub fn len(&self) -> usize {
        self.q.shape()[0]
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded teacher, ready to run batches of rendered views.
pub struct Teacher {
    path: PathBuf,
    fingerprint: Hash32,
    config: TeacherConfig,
    qkv: Option<QkvParams>,
    session: Session,
    provider: Provider,
    extra_outputs: Vec<String>,
    /// The graph outputs holding R_QK and R_VV, when fetched.
    maps: Option<(String, String)>,
}

impl Teacher {
    /// Loads the ONNX model at `path` (with `config` for a third-party model, or the contract's
    /// metadata without), starts a session on the chosen device and checks the outputs' shapes
    /// on one all-zero view.
    pub fn load(
        path: &Path,
        config: Option<&TeacherConfig>,
        options: &TeacherOptions,
    ) -> Result<Self, TeacherError> {
        let bytes = std::fs::read(path).map_err(|source| TeacherError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let fingerprint = Hash32::of_bytes(&bytes);
        let mut graph = OnnxGraph::parse(&bytes, path)?;
        drop(bytes);
        let config = match config {
            Some(c) => c.clone(),
            None => contract_config(&graph)?,
        };
        if config.any_input_size {
            graph.free_input_size(&config.input);
        }
        check_input(&graph, &config)?;
        let qkv = match &config.qkv {
            Some(names) => Some(qkv_params(&graph, names, config.dim as usize, path)?),
            None => None,
        };
        let mut outputs: Vec<(&str, &str)> = vec![
            (&config.tensors.q, "tensors.q"),
            (&config.tensors.k, "tensors.k"),
            (&config.tensors.v, "tensors.v"),
        ];
        if let Some(ln1) = &config.tensors.ln1 {
            outputs.push((ln1, "tensors.ln1"));
        }
        let maps = match (&config.tensors.r_qk, &config.tensors.r_vv) {
            (Some(qk), Some(vv)) if options.relation_maps => Some((qk.clone(), vv.clone())),
            _ => None,
        };
        if let Some((qk, vv)) = &maps {
            outputs.push((qk, "tensors.r_qk"));
            outputs.push((vv, "tensors.r_vv"));
        }
        for extra in &options.extra_outputs {
            outputs.push((extra, "an extra output"));
        }
        let model = graph.select_outputs(&outputs)?;
        drop(graph);

        let runtime = Runtime::get()?;
        let (session, provider) = runtime
            .session(&model, options.device, options.threads)
            .map_err(|e| match e {
                RuntimeError::Ort(source) => TeacherError::Ort {
                    path: path.to_path_buf(),
                    source,
                },
                e => TeacherError::Runtime(e),
            })?;
        let mut teacher = Teacher {
            path: path.to_path_buf(),
            fingerprint,
            config,
            qkv,
            session,
            provider,
            extra_outputs: options.extra_outputs.clone(),
            maps,
        };
        let zeros = vec![0.0; teacher.pixels_per_view()];
        teacher.run(&zeros, 1)?;
        Ok(teacher)
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// blake3 of the ONNX file: the teacher's identity in content keys and stores.
    pub fn fingerprint(&self) -> Hash32 {
        self.fingerprint
    }

    /// The geometry recorded in the store.
    pub fn geometry(&self) -> TeacherGeometry {
        self.config.geometry()
    }

    /// The execution provider the session runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The target block's qkv weight and bias `[3D, D]`, `[3D]`, when the teacher names them.
    pub fn qkv_params(&self) -> Option<&QkvParams> {
        self.qkv.as_ref()
    }

    /// Floats in one rendered view (`3·S·S`).
    pub fn pixels_per_view(&self) -> usize {
        let s = self.config.image_size as usize;
        3 * s * s
    }

    /// Whether this teacher can produce `encoding`; the reason when not.
    pub fn check_encoding(&self, encoding: Encoding) -> Result<(), TeacherError> {
        if !encoding.stores_ln1() {
            return Ok(());
        }
        let missing = match (&self.config.tensors.ln1, &self.qkv) {
            (Some(_), Some(_)) => return Ok(()),
            (None, Some(_)) => "its config names no `tensors.ln1`",
            (Some(_), None) => "its config names no `[qkv]` weight and bias initializers",
            (None, None) => "its config names neither `tensors.ln1` nor `[qkv]` initializers",
        };
        Err(TeacherError::Unsupported {
            path: self.path.clone(),
            encoding,
            reason: missing.to_string(),
        })
    }

    /// Runs `batch` rendered views (`pixels`: `[batch, 3, S, S]` float32, normalised) and
    /// returns q, k, v `[B, H, N, d]` (and ln1 `[B, N, D]`), every shape checked.
    pub fn run(&mut self, pixels: &[f32], batch: usize) -> Result<TeacherBatch, TeacherError> {
        let s = self.config.image_size as usize;
        if pixels.len() != batch * self.pixels_per_view() {
            return Err(TeacherError::Input {
                model: self.path.clone(),
                input: self.config.input.clone(),
                reason: format!(
                    "{} floats given for {batch} views of 3×{s}×{s}",
                    pixels.len()
                ),
            });
        }
        let ort_err = |source: ort::Error| TeacherError::Ort {
            path: self.path.clone(),
            source,
        };
        let input = TensorRef::from_array_view(([batch, 3, s, s], pixels)).map_err(ort_err)?;
        let outputs = self
            .session
            .run(ort::inputs![self.config.input.as_str() => input])
            .map_err(ort_err)?;
        let g = self.config.geometry();
        let fetch = |name: &str| -> Result<ArrayViewD<'_, f32>, TeacherError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| TeacherError::MissingTensor {
                    model: self.path.clone(),
                    tensor: name.to_string(),
                    role: "an output".into(),
                })?;
            value
                .try_extract_array::<f32>()
                .map_err(|source| TeacherError::Ort {
                    path: self.path.clone(),
                    source,
                })
        };
        let t = &self.config.tensors;
        let [q, k, v] = [("q", &t.q), ("k", &t.k), ("v", &t.v)].map(|(role, name)| {
            fetch(name).and_then(|a| heads_first(a, name, role, t.layout, batch, &g))
        });
        let ln1 = match &t.ln1 {
            Some(name) => Some(fetch(name).and_then(|a| {
                let n = g.tokens as usize;
                let d = g.dim as usize;
                check_shape(&a, &[batch, n, d], name, "ln1", "[B, N, D]", &g)?;
                Ok(a.into_dimensionality::<Ix3>().expect("checked").to_owned())
            })?),
            None => None,
        };
        let extra = self
            .extra_outputs
            .iter()
            .map(|name| fetch(name).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        let (h, n) = (g.heads as usize, g.tokens as usize);
        let map = |name: &str, role: &str| -> Result<Array4<f32>, TeacherError> {
            let a = fetch(name)?;
            check_shape(&a, &[batch, h, n, n], name, role, "[B, H, N, N]", &g)?;
            Ok(a.into_dimensionality::<Ix4>().expect("checked").to_owned())
        };
        let maps = match &self.maps {
            Some((qk, vv)) => Some((map(qk, "r_qk")?, map(vv, "r_vv")?)),
            None => None,
        };
        Ok(TeacherBatch {
            q: q?,
            k: k?,
            v: v?,
            ln1,
            maps,
            extra,
        })
    }
}

/// q, k or v in `[B, H, N, d]`, from either layout, after checking its shape.
fn heads_first(
    a: ArrayViewD<'_, f32>,
    name: &str,
    role: &str,
    layout: QkvLayout,
    batch: usize,
    g: &TeacherGeometry,
) -> Result<Array4<f32>, TeacherError> {
    let (h, n, d) = (g.heads as usize, g.tokens as usize, g.head_dim() as usize);
    match layout {
        QkvLayout::Bhnd => {
            check_shape(&a, &[batch, h, n, d], name, role, "[B, H, N, d]", g)?;
            Ok(a.into_dimensionality::<Ix4>().expect("checked").to_owned())
        }
        QkvLayout::Bnd => {
            check_shape(&a, &[batch, n, h * d], name, role, "[B, N, D]", g)?;
            let split = a.to_shape((batch, n, h, d)).expect("checked: B·N·D values");
            Ok(split
                .permuted_axes([0, 2, 1, 3])
                .as_standard_layout()
                .into_owned())
        }
    }
}

fn check_shape(
    a: &ArrayViewD<'_, f32>,
    expected: &[usize],
    name: &str,
    role: &str,
    layout: &str,
    g: &TeacherGeometry,
) -> Result<(), TeacherError> {
    if a.shape() == expected {
        return Ok(());
    }
    Err(TeacherError::Shape {
        tensor: name.to_string(),
        role: role.to_string(),
        expected: expected.to_vec(),
        actual: a.shape().to_vec(),
        why: format!(
            "{layout} with N = {}, H = {}, D = {}, d = {}",
            g.tokens,
            g.heads,
            g.dim,
            g.head_dim()
        ),
    })
}

/// The config a contract teacher implies: its geometry from the metadata, the contract's names.
fn contract_config(graph: &OnnxGraph) -> Result<TeacherConfig, TeacherError> {
    let path = graph.path().to_path_buf();
    let version = graph
        .metadata(contract::META_VERSION)
        .ok_or(TeacherError::NotContract {
            path: path.clone(),
            key: contract::META_VERSION,
        })?;
    if version != "1" {
        return Err(TeacherError::BadMetadata {
            path,
            key: contract::META_VERSION,
            reason: format!("contract version {version:?} is not supported (expected \"1\")"),
        });
    }
    let geometry_json =
        graph
            .metadata(contract::META_GEOMETRY)
            .ok_or(TeacherError::NotContract {
                path: path.clone(),
                key: contract::META_GEOMETRY,
            })?;
    let g: TeacherGeometry =
        serde_json::from_str(geometry_json).map_err(|e| TeacherError::BadMetadata {
            path: path.clone(),
            key: contract::META_GEOMETRY,
            reason: e.to_string(),
        })?;
    let config = TeacherConfig {
        arch: g.arch,
        input: contract::INPUT.to_string(),
        image_size: g.image_size,
        patch: g.patch,
        tokens: g.tokens,
        dim: g.dim,
        heads: g.heads,
        target_block: g.target_block,
        normalization: g.normalization,
        tensors: TensorNames {
            layout: QkvLayout::Bhnd,
            q: contract::Q.to_string(),
            k: contract::K.to_string(),
            v: contract::V.to_string(),
            ln1: Some(contract::LN1.to_string()),
            r_qk: Some(contract::R_QK.to_string()),
            r_vv: Some(contract::R_VV.to_string()),
        },
        qkv: Some(QkvInitializers {
            weight_layout: Some(WeightLayout::OutIn),
            weight: Some(contract::QKV_WEIGHT.to_string()),
            bias: Some(contract::QKV_BIAS.to_string()),
            ..Default::default()
        }),
        features: Vec::new(),
        any_input_size: false,
    };
    if config.heads == 0 || !config.dim.is_multiple_of(config.heads) {
        return Err(TeacherError::BadMetadata {
            path,
            key: contract::META_GEOMETRY,
            reason: format!(
                "heads = {} does not divide dim = {}",
                config.heads, config.dim
            ),
        });
    }
    Ok(config)
}

/// Checks that the pixel input exists and accepts `[B, 3, S, S]` float32.
fn check_input(graph: &OnnxGraph, config: &TeacherConfig) -> Result<(), TeacherError> {
    let bad = |reason: String| TeacherError::Input {
        model: graph.path().to_path_buf(),
        input: config.input.clone(),
        reason,
    };
    let info = graph.input(&config.input).ok_or_else(|| {
        bad(format!(
            "the model has no such input (its inputs: {})",
            graph.input_names().join(", ")
        ))
    })?;
    if info.elem_type != 1 {
        return Err(bad(format!(
            "element type {} is not float32",
            info.elem_type
        )));
    }
    let s = config.image_size as i64;
    let wanted = [None, Some(3), Some(s), Some(s)];
    let fits = info.dims.len() == 4
        && info
            .dims
            .iter()
            .zip(wanted)
            .all(|(have, want)| have.is_none() || want.is_none() || *have == want);
    if !fits {
        let shown: Vec<String> = info
            .dims
            .iter()
            .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
            .collect();
        return Err(bad(format!(
            "declared shape [{}] does not accept [B, 3, {s}, {s}] (image_size = {s})",
            shown.join(", ")
        )));
    }
    Ok(())
}

/// The qkv projection as `[3D, D]` weight (rows q, k, v) and `[3D]` bias.
fn qkv_params(
    graph: &OnnxGraph,
    names: &QkvInitializers,
    dim: usize,
    path: &Path,
) -> Result<QkvParams, TeacherError> {
    let source = names.sources().map_err(|reason| TeacherError::Config {
        path: path.to_path_buf(),
        field: "qkv".into(),
        reason,
    })?;
    let load = |name: &str, role: &str, shape: &[usize]| -> Result<Vec<f32>, TeacherError> {
        let (dims, values) = graph.initializer_f32(name, role)?;
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        if dims != shape {
            return Err(TeacherError::BadInitializer {
                name: name.to_string(),
                role: role.to_string(),
                reason: format!("shape {dims:?}, expected {shape:?} for dim = {dim}"),
            });
        }
        Ok(values)
    };
    // Row-major `[rows, cols]` → `[cols, rows]`.
    let transpose = |values: Vec<f32>, rows: usize, cols: usize| -> Vec<f32> {
        ndarray::Array2::from_shape_vec((rows, cols), values)
            .expect("shape checked")
            .reversed_axes()
            .as_standard_layout()
            .into_owned()
            .into_raw_vec_and_offset()
            .0
    };
    match source {
        QkvSource::Fused {
            weight,
            bias,
            layout,
        } => {
            let weight = match layout {
                WeightLayout::OutIn => load(&weight, "qkv.weight", &[3 * dim, dim])?,
                WeightLayout::InOut => {
                    transpose(load(&weight, "qkv.weight", &[dim, 3 * dim])?, dim, 3 * dim)
                }
            };
            let bias = load(&bias, "qkv.bias", &[3 * dim])?;
            Ok(QkvParams { weight, bias })
        }
        QkvSource::Split {
            weights,
            biases,
            layout,
        } => {
            let mut weight = Vec::with_capacity(3 * dim * dim);
            let mut bias = Vec::with_capacity(3 * dim);
            for (i, part) in ["q", "k", "v"].iter().enumerate() {
                let role = format!("qkv.{part}_weight");
                let w = load(&weights[i], &role, &[dim, dim])?;
                weight.extend(match layout {
                    WeightLayout::OutIn => w,
                    WeightLayout::InOut => transpose(w, dim, dim),
                });
                bias.extend(load(&biases[i], &format!("qkv.{part}_bias"), &[dim])?);
            }
            Ok(QkvParams { weight, bias })
        }
    }
}
