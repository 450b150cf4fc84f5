//! `train bench …`: the command line of the measurements in [`tinymim_train::bench`], and
//! their output (one JSON object per figure with `--json`, else a table).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tinymim_train::bench::{parity, rendezvous, step, throughput};
use tinymim_train::config::VitConfig;
use tinymim_train::device::DeviceSpec;
use tinymim_train::online::TeacherOptions;
use tinymim_train::run::{RunConfig, SourceConfig};

use crate::cli::PrecisionArg;

/// What to measure.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The measurement.
    #[command(subcommand)]
    pub what: BenchCommand,
}

/// The measurements.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A distillation step on --device against the same step on the CPU, in f32 (within 1e-4)
    /// and bf16 (2e-2): the loss and every gradient. One JSON line per precision; exits 1
    /// where one is out of tolerance.
    Parity(StudentArgs),
    /// The student's distillation step, distillation forward and full forward per second.
    Step(StepArgs),
    /// Training from a relation store (and with a teacher online, --teacher) against synthetic
    /// targets: median step time, views/s and the share of time waiting for data.
    Throughput(ThroughputArgs),
    /// The start-up hand-off of a multi-process job under its launcher (torchrun, srun):
    /// every rank prints the digest of the payload rank 0 sent.
    Rendezvous(RendezvousArgs),
}

/// The student and device of a measurement.
#[derive(Debug, Args)]
pub struct StudentArgs {
    /// Student preset: vit-tiny, vit-small or vit-base.
    #[arg(long, default_value = "vit-tiny")]
    pub preset: String,
    /// Views per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Relation heads of the targets (the adaptive block's).
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Auto)]
    pub device: DeviceSpec,
}

/// Options of `train bench step`.
#[derive(Debug, Args)]
pub struct StepArgs {
    #[command(flatten)]
    pub student: StudentArgs,
    /// Timed calls of each, after one warm-up call.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Precision of the matrix products.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Time the step alone (no forwards).
    #[arg(long)]
    pub step_only: bool,
    /// One JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `train bench throughput`.
#[derive(Debug, Args)]
pub struct ThroughputArgs {
    /// Relation store to train from.
    #[arg(long, value_name = "STORE")]
    pub cache: PathBuf,
    /// Source root of the store's images [default: the root the store recorded].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Also train with this teacher checkpoint online (on the same images; --views views each).
    #[arg(long, value_name = "CKPT")]
    pub teacher: Option<PathBuf>,
    /// The online teacher's head count [default: its config.json's, or its width's preset].
    #[arg(long)]
    pub teacher_heads: Option<usize>,
    /// Views per image of the online run.
    #[arg(long, default_value_t = 2)]
    pub views: u32,
    /// Student preset.
    #[arg(long, default_value = "vit-tiny")]
    pub student: String,
    /// Student input size [default: the one whose patch grid gives the store's tokens].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Views per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Steps per mode (the first is the warm-up).
    #[arg(long, default_value_t = 11)]
    pub steps: u64,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value_t = DeviceSpec::Auto)]
    pub device: DeviceSpec,
    /// Precision of the matrix products.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// One JSON line per mode instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `train bench rendezvous`.
#[derive(Debug, Args)]
pub struct RendezvousArgs {
    /// Seconds to wait for the other ranks.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Runs the measurement and prints its figures.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        BenchCommand::Parity(a) => {
            let reports = parity::step_parity(&parity::ParityConfig {
                device: tinymim_train::device::open(a.device)?,
                preset: a.preset.clone(),
                student: VitConfig::preset(&a.preset)?,
                batch: a.batch,
                heads: a.heads,
            })?;
            for r in &reports {
                println!("{}", serde_json::to_string(r)?);
            }
            if let Some(r) = reports.iter().find(|r| !r.pass) {
                anyhow::bail!(
                    "the {} step on {} differs from the CPU's: loss {:.2e}, gradient of {} \
                     {:.2e} (relative; tolerance {:.0e}{})",
                    r.precision,
                    r.device,
                    r.loss_rel_err,
                    r.worst_gradient,
                    r.max_grad_rel_err,
                    r.tolerance,
                    if r.one_sided.is_empty() {
                        String::new()
                    } else {
                        format!("; a gradient on one side only: {}", r.one_sided.join(", "))
                    }
                );
            }
        }
        BenchCommand::Step(a) => {
            let device = tinymim_train::device::open(a.student.device)?;
            let report = step::time_step(&step::StepConfig {
                precision: a.precision.resolve(&device),
                device,
                preset: a.student.preset.clone(),
                student: VitConfig::preset(&a.student.preset)?,
                batch: a.student.batch,
                heads: a.student.heads,
                reps: a.reps,
                step_only: a.step_only,
            })?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
        }
        BenchCommand::Throughput(a) => throughput_table(a)?,
        BenchCommand::Rendezvous(a) => {
            let report = rendezvous::hand_off_check(Duration::from_secs(a.timeout))?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

/// `train bench throughput`: the runs in temporary folders, then the figures.
fn throughput_table(a: &ThroughputArgs) -> anyhow::Result<()> {
    let device = tinymim_train::device::open(a.device)?;
    let mut student = VitConfig::preset(&a.student)?;
    match a.image_size {
        Some(size) => student.image_size = size,
        None => {
            if let Some(size) = crate::cli::image_size_for(&a.cache, student.patch)? {
                student.image_size = size;
            }
        }
    }
    let dir = tempfile::tempdir().context("cannot make a temporary run folder")?;
    let cache = RunConfig {
        source: SourceConfig::Cache {
            store: a.cache.clone(),
            relation_heads: None,
        },
        images: a.images.clone(),
        student,
        epochs: 1000,
        batch: a.batch,
        fit_batch: false,
        accum: 1,
        base_lr: 1.5e-4,
        warmup_epochs: 1.0,
        weight_decay: 0.05,
        clip: None,
        seed: 0,
        jitter: true,
        group_views: false,
        checkpoint_every: None,
        max_steps: Some(a.steps),
        resume: false,
        precision: a.precision.resolve(&device),
        device,
        out: dir.path().join("cache"),
        progress: false,
        prefetch: 4,
    };
    let mut runs = vec![("cache", cache.clone())];
    if let Some(teacher) = &a.teacher {
        let images = a.images.clone().context("--teacher needs --images DIR")?;
        runs.push((
            "online",
            RunConfig {
                source: SourceConfig::Online {
                    teacher: teacher.clone(),
                    options: TeacherOptions {
                        heads: a.teacher_heads,
                        target_block: None,
                        image_size: None,
                    },
                    views: a.views,
                },
                images: Some(images),
                out: dir.path().join("online"),
                ..cache
            },
        ));
    }
    let reports = throughput::measure(&runs)?;
    if a.json {
        for r in &reports {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!("{}", throughput::table(&reports));
    Ok(())
}
