//! The command line of `train` (clap derive) and its translation into a [`RunConfig`]:
//! recipe file values under command-line values under built-in defaults.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tinymim_train::device::DeviceSpec;

use tinymim_train::config::VitConfig;
use tinymim_train::eval::EvalConfig;
use tinymim_train::online::TeacherOptions;
use tinymim_train::probe::{ProbeConfig, TeacherSpec};
use tinymim_train::run::{RunConfig, SourceConfig};
use tinymim_train::Precision;

/// Distil a small ViT student from relation targets (TinyMIM), either from a relation store
/// written by `extract` (--cache) or from a teacher run online (--teacher).
#[derive(Debug, Parser)]
#[command(
    name = "train",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    args_override_self = true,
    after_help = "Examples:\n  train --cache relations.zarr --images photos --student vit-tiny \
                  --recipe configs/recipes/cpu-quick.toml --out runs/tiny\n  train probe \
                  --model runs/tiny/model.safetensors --images labelled/"
)]
pub struct Cli {
    /// Another action than training.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Training options.
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Actions besides training.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score an exported student's frozen features (k-NN and linear) over a labelled folder
    /// (class = sub-folder), beside its random-initialised twin, raw pixels and the teacher.
    Probe(ProbeArgs),
    /// The relation loss (L_QK, L_VV, L) of an exported student on a relation store, typically
    /// of held-out images, beside its random-initialised twin's on the same views.
    Eval(EvalArgs),
    /// Measure this machine: a step on a device against the CPU, the student's step speed,
    /// training throughput, a launcher's start-up hand-off (scripts/gpu_check.sh runs them).
    Bench(crate::bench_cli::BenchArgs),
}

/// Precision of the student's matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// bf16 on CUDA, f32 on the CPU.
    Auto,
    /// Float32 throughout.
    F32,
    /// Products in bfloat16 (autocast-style); parameters, norms, softmax and loss in f32.
    Bf16,
    /// Float32 with TF32 tensor-core products on CUDA (f32 on the CPU).
    Tf32,
}

impl PrecisionArg {
    /// The precision on `device`.
    pub fn resolve(self, device: &Device) -> Precision {
        match self {
            PrecisionArg::Auto => Precision::default_for(device),
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Tf32 => Precision::Tf32,
        }
    }
}

/// Options of a training run.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Relation store written by `extract` (cache mode): a folder, or an `s3://BUCKET/PREFIX`
    /// URL on S3-compatible object storage (endpoint and credentials from the AWS_* variables;
    /// TINYMIM_S3_REQUESTS sets the requests in flight, default 32).
    #[arg(
        long,
        value_name = "STORE",
        required_unless_present = "teacher",
        conflicts_with = "teacher"
    )]
    pub cache: Option<PathBuf>,
    /// Teacher checkpoint (timm/MAE-named .safetensors or MAE .pth): targets computed online.
    #[arg(long, value_name = "CHECKPOINT")]
    pub teacher: Option<PathBuf>,
    /// Relation heads the targets are formed with, from a `qkv`, `ln1` or `ln1-int8` store: the
    /// teacher's q, k, v split into H heads of width D / H, which the student's adaptive block
    /// uses too, so one store serves every student width that H divides [default: the
    /// teacher's heads].
    /// Refused for a `maps` store (its maps are the teacher's own split). Online, the same is
    /// --teacher-heads.
    #[arg(long, value_name = "H", requires = "cache")]
    pub relation_heads: Option<usize>,
    /// Relation heads of the online teacher's target block, and its attention heads where
    /// nothing else gives them [default: `heads` of a config.json beside a .safetensors, else
    /// the heads of the built-in presets of the checkpoint's width: 192/3, 384/6, 768/12,
    /// 1024/16].
    #[arg(long, value_name = "H", requires = "teacher")]
    pub teacher_heads: Option<usize>,
    /// Target block of the online teacher, 1-based [default: the preset's of its width and
    /// depth (MAE ViT-L: 18), else its last block].
    #[arg(long, value_name = "BLOCK", requires = "teacher")]
    pub target_block: Option<usize>,
    /// Input size of the online teacher [default: from its pos_embed].
    #[arg(long, value_name = "PX", requires = "teacher")]
    pub teacher_image_size: Option<usize>,
    /// Views per image for the online teacher (drawn as `extract` draws them, with --seed).
    #[arg(long, value_name = "K", default_value_t = 1, requires = "teacher")]
    pub views: u32,
    /// Folder of the source images [cache mode default: the root the store recorded].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Student preset (vit-tiny, vit-small, vit-base) or a student TOML file.
    #[arg(long, value_name = "NAME|FILE", default_value = "vit-tiny")]
    pub student: String,
    /// Override the student's width.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Override the student's depth.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Override the student's heads (all blocks but the adaptive last one).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Override the student's MLP width [default with --dim: 4 × dim].
    #[arg(long)]
    pub mlp_dim: Option<usize>,
    /// Override the student's patch size.
    #[arg(long)]
    pub patch: Option<usize>,
    /// Override the student's input size (the token count must equal the teacher's)
    /// [default with --cache: the size at which the student's patch gives the store's token
    /// count, e.g. 256 px for patch 16 and 257 tokens; else the preset's].
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Recipe TOML (configs/recipes/*.toml); command-line options override it.
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Epochs the schedule spans [default: the recipe's, else 100].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Views per forward pass [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Forward passes accumulated per optimiser step [default: 1].
    #[arg(long)]
    pub accum: Option<usize>,
    /// Base learning rate; peak = base × batch × accum / 256 [default: 1.5e-4].
    #[arg(long)]
    pub base_lr: Option<f64>,
    /// Linear warm-up epochs [default: the recipe's, else 5 % of the epochs, TinyMIM's 15 of
    /// 300].
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// AdamW weight decay [default: 0.05].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip gradients to this global norm [default: no clipping].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Student drop-path rate [default: the preset's, 0.1].
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// Run seed (initialisation, data order, jitter, drop path, online views) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Turn the student's colour jitter off.
    #[arg(long)]
    pub no_jitter: bool,
    /// Visit each image's views together (FKD-style: images shuffled, their views adjacent),
    /// so a micro-batch decodes each source image once for all its views instead of once per
    /// view. Changes the data order, hence off by default.
    #[arg(long)]
    pub group_views: bool,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Stop after N optimiser steps (the schedule still spans --epochs).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Continue from RUN_DIR/checkpoint.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Training device: auto (this process's GPU in a CUDA build when one answers, else the
    /// CPU), cpu, cuda (under torchrun/Slurm/mpirun the local rank's GPU, else the first) or
    /// cuda:N.
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Auto)]
    pub device: DeviceSpec,
    /// Under a launcher (torchrun, Slurm, mpirun): seconds the start-up rendezvous and each
    /// gradient sum may take before the job is ended with a message (a peer died or stalled).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub collective_timeout: u64,
    /// Precision of the student's matrix products (parameters, AdamW moments, norms, softmax
    /// and the loss are always f32).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Run folder: metrics.jsonl, checkpoint.safetensors, model.safetensors, config.json.
    #[arg(long, value_name = "RUN_DIR", required = true)]
    pub out: Option<PathBuf>,
}

/// Options of `train probe`.
#[derive(Debug, Args)]
#[command(
    after_help = "Every score is printed beside the random-initialised twin's (same \
    architecture and init seed, zero steps), raw pixels' and, with --teacher, the teacher's own \
    (its features through ONNX Runtime), all on the same images and split. Example:\n  train \
    probe --model runs/tiny/model.safetensors --images labelled/ --teacher teacher.onnx \
    --config configs/teachers/dinov2-small.toml"
)]
pub struct ProbeArgs {
    /// Exported student weights (config.json beside them).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Labelled folder: one sub-folder of images per class. Split 80/20 per class by content
    /// hash unless --test-images is given.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// A separate labelled test folder (same class names); all of --images then trains.
    #[arg(long, value_name = "DIR")]
    pub test_images: Option<PathBuf>,
    /// Neighbours that vote in the k-NN probe.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Seed of the random-initialised twin [default: the init_seed the export records].
    #[arg(long, value_name = "SEED")]
    pub twin_seed: Option<u64>,
    /// The teacher's ONNX model, to score its own features too.
    #[arg(long, value_name = "ONNX")]
    pub teacher: Option<PathBuf>,
    /// The teacher's config (third-party models), as for `extract --config`.
    #[arg(long, value_name = "TOML", requires = "teacher")]
    pub config: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N (the student's, and ONNX Runtime's for the teacher).
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Auto)]
    pub device: DeviceSpec,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl ProbeArgs {
    /// The probe's configuration.
    pub fn config(&self) -> anyhow::Result<ProbeConfig> {
        Ok(ProbeConfig {
            model: self.model.clone(),
            images: self.images.clone(),
            test_images: self.test_images.clone(),
            k: self.k,
            device: tinymim_train::device::open(self.device)?,
            twin_seed: self.twin_seed,
            teacher: self.teacher.as_ref().map(|model| TeacherSpec {
                model: model.clone(),
                config: self.config.clone(),
                device: self.device,
            }),
        })
    }
}

/// Options of `train eval`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example (a store of images the student never trained on):\n  extract \
    --teacher T.onnx --images held_out/ --out held_out.zarr\n  train eval --cache held_out.zarr \
    --model runs/tiny/model.safetensors"
)]
pub struct EvalArgs {
    /// Relation store written by `extract` from the student's teacher (a folder or `s3://` URL).
    #[arg(long, value_name = "STORE")]
    pub cache: PathBuf,
    /// Source root of the store's images [default: the root the store recorded].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Exported student weights (config.json beside them).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Views per forward pass (the result does not depend on it).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Seed of the random-initialised twin [default: the init_seed the export records].
    #[arg(long, value_name = "SEED")]
    pub twin_seed: Option<u64>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Auto)]
    pub device: DeviceSpec,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl EvalArgs {
    /// The evaluation's configuration.
    pub fn config(&self) -> anyhow::Result<EvalConfig> {
        Ok(EvalConfig {
            store: self.cache.clone(),
            images: self.images.clone(),
            model: self.model.clone(),
            batch: self.batch,
            device: tinymim_train::device::open(self.device)?,
            twin_seed: self.twin_seed,
        })
    }
}

/// A training recipe (configs/recipes/*.toml): any subset of the run options.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Epochs.
    pub epochs: Option<u64>,
    /// Views per forward pass.
    pub batch: Option<usize>,
    /// Forward passes per optimiser step.
    pub accum: Option<usize>,
    /// Base learning rate.
    pub base_lr: Option<f64>,
    /// Warm-up epochs.
    pub warmup_epochs: Option<f64>,
    /// Weight decay.
    pub weight_decay: Option<f64>,
    /// Gradient clipping norm.
    pub clip: Option<f64>,
    /// Drop-path rate.
    pub drop_path: Option<f64>,
    /// Run seed.
    pub seed: Option<u64>,
    /// Colour jitter.
    pub jitter: Option<bool>,
    /// Checkpoint interval in steps.
    pub checkpoint_every: Option<u64>,
}

impl Recipe {
    /// Reads a recipe file; unknown keys are refused, naming the file.
    pub fn from_file(path: &Path) -> anyhow::Result<Recipe> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the recipe", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: invalid recipe", path.display()))
    }
}

impl TrainArgs {
    /// The student architecture: preset or file, then the overrides.
    fn student(&self, drop_path: Option<f64>) -> anyhow::Result<VitConfig> {
        let mut c = if Path::new(&self.student)
            .extension()
            .is_some_and(|e| e == "toml")
        {
            VitConfig::from_toml_file(Path::new(&self.student))?
        } else {
            VitConfig::preset(&self.student)?
        };
        if let Some(dim) = self.dim {
            c.mlp_dim = self.mlp_dim.unwrap_or(4 * dim);
            c.dim = dim;
        }
        let overrides = [
            (&mut c.depth, self.depth),
            (&mut c.heads, self.heads),
            (&mut c.mlp_dim, self.mlp_dim),
            (&mut c.patch, self.patch),
            (&mut c.image_size, self.image_size),
        ];
        for (field, value) in overrides {
            if let Some(v) = value {
                *field = v;
            }
        }
        if let Some(rate) = drop_path {
            c.drop_path = rate;
        }
        c.validate(&format!("--student {}", self.student))?;
        Ok(c)
    }

    /// The run configuration: command line over recipe over defaults.
    pub fn config(&self) -> anyhow::Result<RunConfig> {
        let recipe = match &self.recipe {
            Some(path) => Recipe::from_file(path)?,
            None => Recipe::default(),
        };
        let epochs = self.epochs.or(recipe.epochs).unwrap_or(DEFAULT_EPOCHS);
        let warmup_epochs = self
            .warmup_epochs
            .or(recipe.warmup_epochs)
            .unwrap_or(WARMUP_SHARE * epochs as f64);
        if warmup_epochs >= epochs as f64 && warmup_epochs > 0.0 {
            bail!(
                "--warmup-epochs {warmup_epochs} is not below --epochs {epochs}: the learning \
                 rate would never leave its warm-up"
            );
        }
        let source = match (&self.cache, &self.teacher) {
            (Some(store), _) => SourceConfig::Cache {
                store: store.clone(),
                relation_heads: self.relation_heads,
            },
            (None, Some(teacher)) => SourceConfig::Online {
                teacher: teacher.clone(),
                options: TeacherOptions {
                    heads: self.teacher_heads,
                    target_block: self.target_block,
                    image_size: self.teacher_image_size,
                },
                views: self.views,
            },
            (None, None) => bail!("pass --cache STORE or --teacher CHECKPOINT"),
        };
        let device = tinymim_train::device::open(self.device)?;
        let mut student = self.student(self.drop_path.or(recipe.drop_path))?;
        if let (None, Some(store)) = (self.image_size, &self.cache) {
            if let Some(size) = image_size_for(store, student.patch)? {
                student.image_size = size;
            }
        }
        Ok(RunConfig {
            source,
            images: self.images.clone(),
            student,
            epochs,
            batch: self.batch.or(recipe.batch).unwrap_or(64),
            fit_batch: self.batch.is_none(),
            accum: self.accum.or(recipe.accum).unwrap_or(1),
            base_lr: self.base_lr.or(recipe.base_lr).unwrap_or(1.5e-4),
            warmup_epochs,
            weight_decay: self.weight_decay.or(recipe.weight_decay).unwrap_or(0.05),
            clip: self.clip.or(recipe.clip),
            seed: self.seed.or(recipe.seed).unwrap_or(0),
            jitter: !self.no_jitter && recipe.jitter.unwrap_or(true),
            group_views: self.group_views,
            checkpoint_every: self.checkpoint_every.or(recipe.checkpoint_every),
            max_steps: self.max_steps,
            resume: self.resume,
            precision: self.precision.resolve(&device),
            device,
            out: self.out.clone().context("--out RUN_DIR is required")?,
            progress: !self.quiet,
            prefetch: 4,
        })
    }
}

/// Epochs when neither the command line nor a recipe sets them.
const DEFAULT_EPOCHS: u64 = 100;
/// Warm-up as a share of the epochs when neither sets it: TinyMIM's 15 of 300.
const WARMUP_SHARE: f64 = 0.05;

/// The input size at which a student of patch `patch` has the token count of `store`
/// (1 + (size/patch)², the class token first), or `None` when no square grid gives it (the
/// run's token check then refuses the student, naming both counts).
pub fn image_size_for(store: &Path, patch: usize) -> anyhow::Result<Option<usize>> {
    let opened = tinymim_formats::RelationStore::open(store)
        .with_context(|| format!("{}: cannot open the relation store", store.display()))?;
    let patches = (opened.header().geometry.tokens as usize).saturating_sub(1);
    let grid = (patches as f64).sqrt().round() as usize;
    Ok((grid > 0 && grid * grid == patches).then_some(grid * patch))
}
