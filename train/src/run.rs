//! The training loop, shared by the cache mode and the online-teacher mode: the same rows,
//! loader, loss and step; only where targets come from differs ([`TargetSource`]).
//!
//! Per optimiser step: `accum` micro-batches from the loader → targets as relation maps on the
//! device → [`Distiller::step`] (student relation logits, relation loss, backward, accumulated
//! gradients, optional clipping, AdamW at the scheduled lr) → one `metrics.jsonl` line and
//! the progress bar. Checkpoints every `checkpoint_every` steps and at the end; a resumed run
//! continues exactly (data order, jitter and drop path included); the end exports
//! `model.safetensors` + `config.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tinymim_formats::{RelationStore, TeacherGeometry, ViewRecipe};

use crate::checkpoint::Checkpoint;
use crate::config::VitConfig;
use crate::data::{
    scan_images, BatchPlan, DataError, ImageCatalog, LoadedBatch, Loader, LoaderSpec, Payload,
    RenderSpec, RowSet, TargetDecoder, TargetFeed,
};
use crate::dist::{Part, World};
use crate::distill::{Distiller, MicroBatch};
use crate::error::TrainError;
use crate::export::{export_student, WEIGHTS_FILE};
use crate::metrics::{MetricsLog, Progress, StepMetrics};
use crate::model::Student;
use crate::online::{OnlineTeacher, TeacherOptions};
use crate::optim::{AdamW, AdamWConfig};
use crate::precision::Precision;
use crate::rng::TrainRng;
use crate::schedule::LrSchedule;

/// File name of the resumable checkpoint in the run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Why a run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data path failed (store, images, targets).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model, optimiser or checkpoint code failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The options contradict each other or the data; the message names both sides.
    #[error("{0}")]
    Setup(String),
    /// A teacher run through ONNX Runtime failed (`train probe --teacher`).
    #[error(transparent)]
    Teacher(#[from] tinymim_extract::teacher::TeacherError),
    /// Writing the run folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias of runs.
pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// Where a run's targets come from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A relation store written by `extract`.
    Cache {
        /// The store folder.
        store: PathBuf,
        /// Relation heads the targets are formed with (`qkv`, `ln1` and `ln1-int8` stores;
        /// `None`: the teacher's), which the student's adaptive block then uses.
        relation_heads: Option<usize>,
    },
    /// A teacher run in candle on every micro-batch.
    Online {
        /// timm/MAE-named safetensors or MAE `.pth`.
        teacher: PathBuf,
        /// What the checkpoint cannot say.
        options: TeacherOptions,
        /// Views per image (drawn as `extract` draws them, with the run seed).
        views: u32,
    },
}

/// Everything a run needs (the CLI builds it; tests and benchmarks build it directly).
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Target source.
    pub source: SourceConfig,
    /// Source root of the images; cache mode defaults to the root the store recorded.
    pub images: Option<PathBuf>,
    /// Student architecture.
    pub student: VitConfig,
    /// Epochs the schedule spans.
    pub epochs: u64,
    /// Views per micro-batch (one forward pass).
    pub batch: usize,
    /// Whether `batch` came from a recipe or the default rather than `--batch`: then a training
    /// set smaller than one step trains with the batch lowered to what it holds
    /// ([`Prepared::lowered_batch`]) instead of being refused.
    pub fit_batch: bool,
    /// Micro-batches per optimiser step (effective batch = batch · accum).
    pub accum: usize,
    /// Base learning rate; peak lr = base · batch · accum / 256.
    pub base_lr: f64,
    /// Warm-up epochs.
    pub warmup_epochs: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient clipping norm.
    pub clip: Option<f64>,
    /// Run seed: initialisation, data order, jitter, drop path (and online views).
    pub seed: u64,
    /// Student colour jitter on or off.
    pub jitter: bool,
    /// Each image's views visited together (FKD-style; one decode per image and micro-batch).
    pub group_views: bool,
    /// Save a checkpoint every this many steps (besides the last one).
    pub checkpoint_every: Option<u64>,
    /// Stop after this many optimiser steps (the schedule still spans `epochs`).
    pub max_steps: Option<u64>,
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Training device.
    pub device: Device,
    /// Run folder.
    pub out: PathBuf,
    /// Show the progress bar.
    pub progress: bool,
    /// Precision of the student's matrix products.
    pub precision: Precision,
    /// Micro-batches the loader prepares ahead.
    pub prefetch: usize,
}

/// What a finished run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Optimiser steps done in total (resumed ones included).
    pub steps: u64,
    /// Steps done by this invocation.
    pub new_steps: u64,
    /// Epochs completed (fractional).
    pub epochs: f64,
    /// Seconds of the training loop in this invocation.
    pub seconds: f64,
    /// Views per second over this invocation.
    pub views_per_s: f64,
    /// Seconds the loop waited for data.
    pub data_wait_s: f64,
    /// Loss of the last step this invocation took; `None` when it took none (a resumed run
    /// that was already complete).
    pub final_loss: Option<f64>,
    /// The exported weights.
    pub weights: PathBuf,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(loss) = self.final_loss else {
            return write!(
                f,
                "nothing left to train: the checkpoint is already at step {} ({:.2} epochs); \
                 wrote {}",
                self.steps,
                self.epochs,
                self.weights.display()
            );
        };
        write!(
            f,
            "trained {} steps ({:.2} epochs) in {:.1} s, {:.1} views/s, {:.1} s waiting for data, \
             final loss {loss:.4}; wrote {}",
            self.steps,
            self.epochs,
            self.seconds,
            self.views_per_s,
            self.data_wait_s,
            self.weights.display()
        )
    }
}

/// Where a prepared run's targets come from, on the training device.
pub enum TargetSource {
    /// Decoded from stored rows.
    Stored(TargetDecoder),
    /// Computed by a teacher.
    Online(Box<OnlineTeacher>),
}

impl TargetSource {
    /// The relation maps `(R_QK, R_VV)` of a micro-batch's payload, `[B, H, N, N]` each.
    pub fn maps(
        &self,
        payload: &Payload,
        batch: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        Ok(match (self, payload) {
            (TargetSource::Stored(decoder), Payload::Stored(raw)) => decoder.decode(raw)?,
            (TargetSource::Online(teacher), Payload::TeacherPixels(pixels)) => {
                let s = teacher.geometry().image_size as usize;
                let pixels = Tensor::from_slice(pixels, (batch, 3, s, s), device)?;
                teacher.maps(&pixels)?
            }
            _ => unreachable!("the loader's feed matches the target source"),
        })
    }
}

/// A run checked and ready: rows, images and targets agree with the student.
pub struct Prepared {
    /// The training set.
    pub rows: Arc<RowSet>,
    /// Its source images.
    pub catalog: Arc<ImageCatalog>,
    /// What the loader delivers as targets.
    pub feed: TargetFeed,
    /// How targets become maps.
    pub targets: TargetSource,
    /// The teacher's geometry.
    pub geometry: TeacherGeometry,
    /// Relation heads of the targets, and of the student's adaptive block.
    pub relation_heads: usize,
    /// How student pixels are rendered.
    pub student_pixels: RenderSpec,
    /// Batching: the micro-batch the run takes (`plan.batch`; every step uses it, not the
    /// configured one).
    pub plan: BatchPlan,
    /// The configured batch where it was lowered to fit a small training set
    /// ([`RunConfig::fit_batch`]).
    pub lowered_batch: Option<usize>,
}

impl Prepared {
    /// Opens the target source and checks, before any training: a store with committed rows,
    /// source images present, a student whose width the teacher's heads divide and whose
    /// token count equals the teacher's, and enough rows for one step.
    pub fn new(config: &RunConfig) -> Result<Prepared> {
        if config.batch == 0 || config.accum == 0 || config.epochs == 0 {
            return Err(RunError::Setup(
                "--batch, --accum and --epochs must be at least 1".to_string(),
            ));
        }
        let (rows, catalog, feed, targets, geometry) = match &config.source {
            SourceConfig::Cache {
                store,
                relation_heads,
            } => {
                let opened = RelationStore::open(store).map_err(DataError::from)?;
                let reader = opened.reader().map_err(DataError::from)?;
                let rows = RowSet::from_store(&reader, store)?;
                let root = match &config.images {
                    Some(root) => root.clone(),
                    None => recorded_source_root(&opened)?.ok_or_else(|| {
                        RunError::Setup(format!(
                            "{}: the store records no source root; pass --images DIR, the \
                             folder extract read",
                            store.display()
                        ))
                    })?,
                };
                let catalog = ImageCatalog::from_store(&reader, &rows, &root)?;
                let header = opened.header().clone();
                let qkv = opened.qkv_params().map_err(DataError::from)?;
                let decoder =
                    TargetDecoder::new(&header, qkv.as_ref(), *relation_heads, &config.device)?;
                let feed = TargetFeed::Store(Arc::new(reader));
                (
                    rows,
                    catalog,
                    feed,
                    TargetSource::Stored(decoder),
                    header.geometry,
                )
            }
            SourceConfig::Online {
                teacher,
                options,
                views,
            } => {
                let teacher = OnlineTeacher::load(teacher, options, &config.device)?;
                let root = config.images.as_ref().ok_or_else(|| {
                    RunError::Setup("the online teacher needs --images DIR".to_string())
                })?;
                let found = scan_images(root)?;
                let recipe = ViewRecipe {
                    seed: config.seed,
                    ..ViewRecipe::default()
                };
                let rows = RowSet::sampled(&found, &recipe, *views);
                let geometry = teacher.geometry().clone();
                let feed = TargetFeed::Teacher(RenderSpec {
                    size: geometry.image_size,
                    normalization: geometry.normalization,
                    jitter_seed: None,
                });
                let catalog = ImageCatalog::from_found(&found);
                (
                    rows,
                    catalog,
                    feed,
                    TargetSource::Online(Box::new(teacher)),
                    geometry,
                )
            }
        };
        let relation_heads = match &targets {
            TargetSource::Stored(decoder) => decoder.heads(),
            TargetSource::Online(_) => geometry.heads as usize,
        };
        check_student(&config.student, &geometry, relation_heads)?;
        let mut plan = BatchPlan {
            rows: rows.len(),
            batch: config.batch,
            accum: config.accum,
            seed: config.seed,
            group_views: config.group_views,
        };
        let mut lowered_batch = None;
        if plan.steps_per_epoch() == 0 && config.fit_batch && rows.len() >= config.accum {
            lowered_batch = Some(config.batch);
            plan.batch = rows.len() / config.accum;
        }
        if plan.steps_per_epoch() == 0 {
            return Err(RunError::Setup(format!(
                "the training set has {} views, fewer than one step's {} (--batch {} × --accum \
                 {}); lower --batch or add views",
                rows.len(),
                config.batch * config.accum,
                config.batch,
                config.accum
            )));
        }
        Ok(Prepared {
            rows: Arc::new(rows),
            catalog: Arc::new(catalog),
            feed,
            targets,
            student_pixels: RenderSpec {
                size: config.student.image_size as u32,
                normalization: geometry.normalization,
                jitter_seed: config.jitter.then_some(config.seed),
            },
            geometry,
            relation_heads,
            plan,
            lowered_batch,
        })
    }

    /// The line that says the batch was lowered to fit the training set, where it was.
    pub fn batch_note(&self) -> Option<String> {
        self.lowered_batch.map(|from| {
            format!(
                "train: the training set has {} views, fewer than one step's {} (batch {from} × \
                 accum {}, from the recipe or the default): training with batch {}",
                self.plan.rows,
                from * self.plan.accum,
                self.plan.accum,
                self.plan.batch
            )
        })
    }

    /// The loader of micro-batches `first..first + count`.
    pub fn loader_spec(&self, first: u64, count: u64, prefetch: usize) -> LoaderSpec {
        LoaderSpec {
            rows: self.rows.clone(),
            catalog: self.catalog.clone(),
            plan: self.plan,
            student: self.student_pixels,
            feed: self.feed.clone(),
            first,
            count,
            prefetch,
            part: Part::WHOLE,
        }
    }

    /// Student pixels and target maps of a loaded micro-batch, as tensors on `device`.
    pub fn tensors(&self, batch: &LoadedBatch, device: &Device) -> Result<MicroTensors> {
        let b = batch.rows.len();
        let s = self.student_pixels.size as usize;
        let pixels = Tensor::from_slice(&batch.pixels, (b, 3, s, s), device)?;
        let (target_qk, target_vv) = self.targets.maps(&batch.payload, b, device)?;
        Ok(MicroTensors {
            pixels,
            target_qk,
            target_vv,
        })
    }
}

/// One micro-batch as tensors on the training device.
pub struct MicroTensors {
    /// Student input `[B, 3, S, S]`.
    pub pixels: Tensor,
    /// Teacher R_QK `[B, H, N, N]`.
    pub target_qk: Tensor,
    /// Teacher R_VV `[B, H, N, N]`.
    pub target_vv: Tensor,
}

impl MicroTensors {
    /// The step's view of it.
    pub fn micro_batch(&self) -> MicroBatch<'_> {
        MicroBatch {
            pixels: &self.pixels,
            target_qk: &self.target_qk,
            target_vv: &self.target_vv,
        }
    }
}

/// The source root the newest segment that recorded one names (`extract`'s commit summary,
/// [`SegmentInfo::source_root`](tinymim_formats::store::SegmentInfo::source_root)).
fn recorded_source_root(store: &RelationStore) -> Result<Option<PathBuf>> {
    let segments = store.segments().map_err(DataError::from)?;
    Ok(segments.iter().rev().find_map(|s| s.source_root()))
}

/// Refuses a student the teacher's targets cannot train: width not divisible by the relation
/// heads, or another token count.
fn check_student(
    student: &VitConfig,
    teacher: &TeacherGeometry,
    relation_heads: usize,
) -> Result<()> {
    student.validate("student")?;
    student.validate_relation_heads(relation_heads)?;
    if student.tokens() != teacher.tokens as usize {
        return Err(RunError::Setup(format!(
            "the student sees {} tokens ({} px / patch {} = {}², plus the class token) but the \
             teacher's targets have {} tokens ({} px, patch {}); choose --image-size and --patch \
             so that (image size / patch)² + 1 = {}",
            student.tokens(),
            student.image_size,
            student.patch,
            student.grid(),
            teacher.tokens,
            teacher.image_size,
            teacher.patch,
            teacher.tokens
        )));
    }
    Ok(())
}

/// What a checkpoint records about the data so that a resumed run can refuse to continue a
/// different one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LoopState {
    rows_digest: String,
    batch: usize,
    accum: usize,
    seed: u64,
    jitter: bool,
    epochs: u64,
    /// Absent from checkpoints of runs before the option existed (all ungrouped).
    #[serde(default)]
    group_views: bool,
}

impl LoopState {
    fn of(config: &RunConfig, prepared: &Prepared) -> LoopState {
        LoopState {
            rows_digest: prepared.rows.digest().to_hex(),
            batch: prepared.plan.batch,
            accum: config.accum,
            seed: config.seed,
            jitter: config.jitter,
            epochs: config.epochs,
            group_views: config.group_views,
        }
    }

    /// Refuses to resume with other data or batching, naming the first difference.
    fn check_resume(&self, saved: &serde_json::Value, path: &Path) -> Result<()> {
        let saved: LoopState = serde_json::from_value(saved.clone()).map_err(|e| {
            RunError::Setup(format!("{}: unreadable loop state: {e}", path.display()))
        })?;
        let differ = |what: &str, a: String, b: String| {
            RunError::Setup(format!(
                "{}: cannot resume: the checkpoint was trained with {what} {a}, this command \
                 asks for {b}",
                path.display()
            ))
        };
        if saved.rows_digest != self.rows_digest {
            return Err(differ(
                "a training set of digest",
                saved.rows_digest[..12].to_string(),
                format!("digest {}", &self.rows_digest[..12]),
            ));
        }
        for (what, a, b) in [
            ("--batch", saved.batch as u64, self.batch as u64),
            ("--accum", saved.accum as u64, self.accum as u64),
            ("--seed", saved.seed, self.seed),
            ("--epochs", saved.epochs, self.epochs),
            (
                "--no-jitter off=1",
                u64::from(saved.jitter),
                u64::from(self.jitter),
            ),
            (
                "--group-views on=1",
                u64::from(saved.group_views),
                u64::from(self.group_views),
            ),
        ] {
            if a != b {
                return Err(differ(what, a.to_string(), b.to_string()));
            }
        }
        Ok(())
    }
}

/// A fresh distiller for `config` (student initialised from the run seed).
fn fresh_distiller(config: &RunConfig, prepared: &Prepared) -> Result<Distiller> {
    let student = Student::new(
        &config.student,
        prepared.relation_heads,
        config.seed,
        &config.device,
    )?;
    let optimizer = AdamW::new(
        student.params(),
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
    );
    let schedule = LrSchedule::scaled(
        config.base_lr,
        prepared.plan.batch * config.accum,
        config.warmup_epochs,
        config.epochs as f64,
        prepared.plan.steps_per_epoch(),
    );
    Ok(Distiller {
        student,
        optimizer,
        schedule,
        // A stream distinct from the initialisation's, which is seeded with the seed itself.
        rng: TrainRng::from_seed(config.seed ^ 0x9e37_79b9_7f4a_7c15),
        step: 0,
        clip_grad: config.clip,
    })
}

/// The distiller to start from: fresh, or the run folder's checkpoint with `--resume`.
fn starting_point(config: &RunConfig, prepared: &Prepared, state: &LoopState) -> Result<Distiller> {
    if !config.resume {
        return fresh_distiller(config, prepared);
    }
    let path = config.out.join(CHECKPOINT_FILE);
    if !path.is_file() {
        return Err(RunError::Setup(format!(
            "{}: no checkpoint to resume from",
            path.display()
        )));
    }
    let checkpoint = Checkpoint::load(&path, &config.device)?;
    state.check_resume(&checkpoint.loop_state, &path)?;
    if checkpoint.distiller.student.config() != &config.student {
        return Err(RunError::Setup(format!(
            "{}: cannot resume: the checkpoint's student is {:?}, this command asks for {:?}",
            path.display(),
            checkpoint.distiller.student.config(),
            config.student
        )));
    }
    let heads = checkpoint.distiller.student.relation_heads();
    if heads != prepared.relation_heads {
        return Err(RunError::Setup(format!(
            "{}: cannot resume: the checkpoint's student was trained with {heads} relation \
             heads, this command asks for {} relation heads (--relation-heads, or online \
             --teacher-heads)",
            path.display(),
            prepared.relation_heads
        )));
    }
    Ok(checkpoint.distiller)
}

/// Runs training as configured, from preparation to export.
pub fn train(config: &RunConfig) -> Result<RunSummary> {
    let prepared = Prepared::new(config)?;
    train_prepared(config, &prepared)
}

/// Runs training on an already prepared run.
pub fn train_prepared(config: &RunConfig, prepared: &Prepared) -> Result<RunSummary> {
    train_in(config, prepared, &World::single())
}

/// Runs training as one process of `world` (data parallel): the same command line gives the
/// same run at any world size, `--batch` and `--accum` being global. Every process loads and
/// trains on its part of each micro-batch and takes the same update; rank 0 alone writes the
/// metrics, checkpoints and export, and every process returns the same summary.
pub fn train_in(config: &RunConfig, prepared: &Prepared, world: &World) -> Result<RunSummary> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::Io { path, source }
    };
    let batch = prepared.plan.batch;
    if batch < world.size() {
        return Err(RunError::Setup(format!(
            "--batch {batch} is smaller than the world of {} processes: each process needs at \
             least one view of every micro-batch",
            world.size()
        )));
    }
    let lead = world.is_lead();
    std::fs::create_dir_all(&config.out).map_err(io(&config.out))?;
    let state = LoopState::of(config, prepared);
    let state_json = serde_json::to_value(&state).expect("loop state serialises");
    let mut distiller = starting_point(config, prepared, &state)?;
    distiller.student.set_precision(config.precision);
    crate::device::configure_gemm(config.precision);
    let start = distiller.step;
    let total = config.epochs * prepared.plan.steps_per_epoch();
    let end = config.max_steps.map_or(total, |m| m.min(total)).max(start);
    let accum = config.accum as u64;
    let loader = Loader::start(LoaderSpec {
        part: world.part(),
        ..prepared.loader_spec(start * accum, (end - start) * accum, config.prefetch)
    });
    let mut log = if lead {
        Some(
            MetricsLog::open(&config.out, config.resume.then_some(start))
                .map_err(io(&config.out.join(crate::metrics::METRICS_FILE)))?,
        )
    } else {
        None
    };
    let progress = Progress::new(end, start, config.progress && lead);
    let checkpoint_path = config.out.join(CHECKPOINT_FILE);
    let views_per_step = (batch * config.accum) as f64;

    let began = Instant::now();
    let (mut total_wait, mut last_loss) = (0.0, None);
    let mut loader = loader;
    for _ in start..end {
        let step_began = Instant::now();
        let mut wait = 0.0;
        let mut micro = Vec::with_capacity(config.accum);
        let mut epoch = 0;
        for _ in 0..config.accum {
            let waited = Instant::now();
            let batch = loader.next().ok_or_else(|| {
                RunError::Setup("the loader stopped before the last step".to_string())
            })??;
            wait += waited.elapsed().as_secs_f64();
            epoch = batch.epoch;
            micro.push(prepared.tensors(&batch, &config.device)?);
        }
        let batches: Vec<MicroBatch> = micro.iter().map(MicroTensors::micro_batch).collect();
        let report = distiller.step_in(&batches, world, batch)?;
        if !report.loss.is_finite() {
            return Err(RunError::Setup(format!(
                "the loss became {} at step {}; lower --base-lr or set --clip",
                report.loss, distiller.step
            )));
        }
        let seconds = step_began.elapsed().as_secs_f64();
        let metrics = StepMetrics {
            step: distiller.step,
            epoch,
            loss: report.loss,
            loss_qk: report.loss_qk,
            loss_vv: report.loss_vv,
            lr: report.lr,
            grad_norm: report.grad_norm,
            views_per_s: views_per_step / seconds.max(1e-9),
            data_wait_s: wait,
        };
        if let Some(log) = &mut log {
            log.write(&metrics).map_err(io(log.path()))?;
        }
        progress.step(&metrics);
        total_wait += wait;
        last_loss = Some(report.loss);
        let every = config.checkpoint_every.unwrap_or(0);
        if lead && every > 0 && distiller.step % every == 0 && distiller.step < end {
            Checkpoint::save(&checkpoint_path, &distiller, &state_json)?;
            progress.println(format!(
                "step {}: saved {}",
                distiller.step,
                checkpoint_path.display()
            ));
        }
    }
    drop(loader);
    let seconds = began.elapsed().as_secs_f64();
    if lead {
        Checkpoint::save(&checkpoint_path, &distiller, &state_json)?;
        export_student(&config.out, &distiller.student)?;
    }
    // No process leaves before rank 0 has written the run's files: a launcher that sees the
    // others finish may end the job.
    world.barrier(&config.device, "the end-of-run barrier")?;
    progress.finish();
    let new_steps = end - start;
    Ok(RunSummary {
        steps: distiller.step,
        new_steps,
        epochs: distiller.step as f64 / prepared.plan.steps_per_epoch() as f64,
        seconds,
        views_per_s: new_steps as f64 * views_per_step / seconds.max(1e-9),
        data_wait_s: total_wait,
        final_loss: last_loss,
        weights: config.out.join(WEIGHTS_FILE),
    })
}
