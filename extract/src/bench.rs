//! `extract bench`: extraction throughput against the bare teacher, side by side on the same
//! views and batch — the teacher alone ([`Teacher::run`], ONNX Runtime plus copying q/k/v out,
//! on views rendered beforehand: the ceiling the pipeline can reach), then the whole pipeline
//! ([`extract`]: walk, hash, decode, render, teacher, encode, write, commit) into a fresh store.
//! The teacher is a given ONNX model, or one exported on the spot from random weights
//! ([`random_teacher`]) for speed alone: a ViT-L to block 18 is 450 MB of weights, which is
//! cheaper to make on the machine that times it than to carry there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use tinymim_formats::images::walk;
use tinymim_formats::view::sample_views;
use tinymim_formats::vit::{ArchFile, ArchOverrides, VitArch};
use tinymim_formats::{Encoding, SourceImage, ViewRecipe};

use crate::export::{self, ArchArgs, ExportArgs, WeightDtype};
use crate::pipeline::{extract, ExtractOptions, Summary};
use crate::source::Shard;
use crate::teacher::Teacher;

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Source image folder.
    pub images: PathBuf,
    /// Views per image.
    pub views: u32,
    /// Views per teacher batch.
    pub batch: usize,
    /// Encoding of the pipeline's store.
    pub encoding: Encoding,
    /// Threads that decode and render images in the pipeline.
    pub render_threads: usize,
}

/// One comparison: the JSON line of `extract bench`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Always `extraction`.
    pub check: &'static str,
    /// The teacher's architecture name and target block.
    pub teacher: String,
    /// ONNX Runtime's execution provider.
    pub provider: String,
    /// The pipeline's encoding.
    pub encoding: String,
    /// Views timed (every view of every image).
    pub views: usize,
    /// Views per teacher batch.
    pub batch: usize,
    /// The whole pipeline's views/s.
    pub extract_views_per_s: f64,
    /// The bare session's views/s on the same views, after one warm-up batch.
    pub teacher_views_per_s: f64,
    /// Pipeline over bare session.
    pub ratio: f64,
    /// Store bytes per view written.
    pub bytes_per_view: Option<f64>,
}

/// Every view of every image under `images`, rendered for `teacher` (normalised float32 CHW,
/// one view after another), and their count.
pub fn render_all(
    teacher: &Teacher,
    images: &Path,
    views: u32,
) -> anyhow::Result<(Vec<f32>, usize)> {
    let g = teacher.geometry();
    let recipe = ViewRecipe::default();
    let per_view = teacher.pixels_per_view();
    let mut pixels = Vec::new();
    for file in walk(images)? {
        let (image, hash) = SourceImage::open(&file.path)?;
        for view in sample_views(&recipe, &hash, image.width(), image.height(), views) {
            let start = pixels.len();
            pixels.resize(start + per_view, 0.0);
            image.render(&view, g.image_size, &g.normalization, &mut pixels[start..])?;
        }
    }
    let count = pixels.len() / per_view;
    Ok((pixels, count))
}

/// The bare session's views/s over `pixels` in batches of `batch`, after one warm-up batch
/// (whose allocations and kernel choices no later batch pays).
pub fn bare_views_per_s(
    teacher: &mut Teacher,
    pixels: &[f32],
    batch: usize,
) -> anyhow::Result<f64> {
    let per_view = teacher.pixels_per_view();
    let warm = pixels.len().min(batch * per_view);
    teacher.run(&pixels[..warm], warm / per_view)?;
    let started = Instant::now();
    for chunk in pixels.chunks(batch * per_view) {
        teacher.run(chunk, chunk.len() / per_view)?;
    }
    Ok((pixels.len() / per_view) as f64 / started.elapsed().as_secs_f64())
}

/// The bare session, then the pipeline into a fresh store at `store`, on the same views.
pub fn extraction_vs_bare(
    teacher: &mut Teacher,
    options: &BenchOptions,
    store: &Path,
) -> anyhow::Result<(BenchReport, Summary)> {
    let (pixels, views) = render_all(teacher, &options.images, options.views)?;
    let bare = bare_views_per_s(teacher, &pixels, options.batch)?;
    drop(pixels);
    let summary = extract(
        teacher,
        &ExtractOptions {
            images: options.images.clone(),
            views: options.views,
            encoding: options.encoding,
            out: store.to_path_buf(),
            seed: 0,
            shard: Shard::ALL,
            batch: options.batch,
            render_threads: options.render_threads,
            shard_rows: None,
            checkpoint_every: Duration::from_secs(10),
            progress: false,
        },
    )?;
    let g = teacher.geometry();
    let report = BenchReport {
        check: "extraction",
        teacher: format!("{} to block {}", g.arch, g.target_block),
        provider: teacher.provider().name().to_string(),
        encoding: options.encoding.name().to_string(),
        views,
        batch: options.batch,
        extract_views_per_s: summary.views_per_s,
        teacher_views_per_s: bare,
        ratio: summary.views_per_s / bare,
        bytes_per_view: summary.bytes_per_view,
    };
    Ok((report, summary))
}

/// Writes `model.safetensors` (timm names; N(0, 0.02) weights, LayerNorm weights 1 and biases
/// 0) and `config.json` for `arch` into `dir`, with only the blocks up to the target block
/// (the rest would never run); returns the weights' path.
pub fn write_random_checkpoint(arch: &VitArch, dir: &Path) -> anyhow::Result<PathBuf> {
    let (d, mlp, p) = (arch.dim, arch.mlp_dim, arch.patch);
    let tokens = 1 + (arch.image_size / p) * (arch.image_size / p);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, tokens, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
        ("patch_embed.proj.bias".into(), vec![d]),
    ];
    for i in 0..arch.target_block {
        for (suffix, shape) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![mlp, d]),
            ("mlp.fc1.bias", vec![mlp]),
            ("mlp.fc2.weight", vec![d, mlp]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            shapes.push((format!("blocks.{i}.{suffix}"), shape));
        }
    }
    let mut tensors = HashMap::new();
    for (name, shape) in shapes {
        let t = if name.contains("norm") {
            let ones = name.ends_with(".weight");
            Tensor::full(if ones { 1f32 } else { 0f32 }, shape, &Device::Cpu)?
        } else {
            Tensor::randn(0f32, 0.02, shape, &Device::Cpu)?
        };
        tensors.insert(name, t.to_dtype(DType::F32)?);
    }
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    let config = serde_json::json!({
        "architecture": arch.name,
        "dim": d,
        "depth": arch.target_block,
        "heads": arch.heads,
        "mlp_dim": mlp,
        "patch": p,
        "image_size": arch.image_size,
    });
    std::fs::write(dir.join("config.json"), config.to_string())
        .with_context(|| format!("{}: cannot write config.json", dir.display()))?;
    Ok(path)
}

/// Exports a teacher of the built-in `preset` (e.g. `mae-vit-large`), truncated after `block`
/// (default: the preset's), from random weights into `dir`; returns the ONNX path.
pub fn random_teacher(
    preset: &str,
    block: Option<usize>,
    dtype: WeightDtype,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let overrides = ArchOverrides {
        target_block: block,
        ..ArchOverrides::default()
    };
    let arch = VitArch::resolve(&overrides, &ArchFile::preset(preset)?)?;
    let checkpoint = write_random_checkpoint(&arch, dir)?;
    let out = dir.join(format!("{preset}-block{}.onnx", arch.target_block));
    export::export(&ExportArgs {
        checkpoint,
        out: out.clone(),
        preset: None,
        config: None,
        arch: ArchArgs {
            block: Some(arch.target_block),
            ..ArchArgs::default()
        },
        dtype,
    })?;
    Ok(out)
}
