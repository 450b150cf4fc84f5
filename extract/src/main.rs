//! `extract`: phase one of tinymim. Runs a teacher ViT through ONNX Runtime over deterministic
//! views of an image folder and writes its relation targets to a relation store.
//!
//! Exit status: 0 on success, 1 on failure, 2 on a usage error.

#![forbid(unsafe_code)]

mod bench_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use tinymim_extract::export;
use tinymim_extract::inspect::inspect;
use tinymim_extract::pipeline::{extract, ExtractOptions};
use tinymim_extract::runtime::{Device, Runtime};
use tinymim_extract::source::{choose_shard, Shard};
use tinymim_extract::teacher::{Teacher, TeacherConfig, TeacherOptions};
use tinymim_extract::verify::{verify, Recompute};
use tinymim_formats::{Encoding, RelationStore};

/// Extract a teacher's relation targets (TinyMIM) into a relation store.
///
/// Renders VIEWS deterministic RandomResizedCrop views of every image under --images, runs the
/// teacher ONNX model through ONNX Runtime (CUDA when available, else CPU) and stores the target
/// block's relation targets under content keys in a Zarr v3 store. A re-run skips every key
/// already committed, so an interrupted run resumes where it stopped.
#[derive(Debug, Parser)]
#[command(
    name = "extract",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  extract --teacher vit_s_focus.onnx --config configs/teachers/dinov2-small.toml \\\n          --images photos/ --views 4 --out relations.zarr\n  extract inspect relations.zarr\n  extract verify relations.zarr --images photos/ --teacher vit_s_focus.onnx --sample 8"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a relation store holds: teacher, geometry, encoding, segments, size.
    Inspect(InspectArgs),
    /// Check a store's checksums and content keys; optionally recompute sampled rows.
    Verify(VerifyArgs),
    /// Export a teacher ONNX (truncated after the target block) from an MAE checkpoint.
    Teacher(export::ExportArgs),
    /// Time the whole pipeline against the bare teacher on the same views (one JSON line), with
    /// a given teacher or one exported from random weights (--random-teacher).
    Bench(bench_cli::BenchArgs),
}

/// How the teacher runs.
#[derive(Debug, Args)]
struct TeacherArgs {
    /// Teacher ONNX model (exported by `extract teacher`, or third-party with --config).
    #[arg(long, value_name = "ONNX")]
    teacher: Option<PathBuf>,
    /// Teacher config naming a third-party model's q/k/v tensors (configs/teachers/*.toml).
    #[arg(long, value_name = "TOML")]
    config: Option<PathBuf>,
    /// Where the teacher runs: auto (the CUDA execution provider when the loaded ONNX Runtime
    /// has it and a GPU is present, else the CPU), cpu, cuda or cuda:N (an error when the CUDA
    /// provider cannot start; never a silent CPU fallback). Bare cuda (and auto's GPU) is this
    /// process's own under a launcher: GPU LOCAL_RANK (OMPI_COMM_WORLD_LOCAL_RANK,
    /// SLURM_LOCALID), or 0 when CUDA_VISIBLE_DEVICES lists a single GPU.
    #[arg(long, value_name = "DEVICE", default_value_t = Device::Auto)]
    device: Device,
    /// ONNX Runtime intra-op threads [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Source image folder (ImageNet layout <class>/<file> gives labels).
    #[arg(long, value_name = "DIR", required = true)]
    images: Option<PathBuf>,
    /// Views per image.
    #[arg(long, value_name = "K", required = true, value_parser = clap::value_parser!(u32).range(1..))]
    views: Option<u32>,
    /// Encoding of the stored targets: maps = R_QK and R_VV [2, H, N, N]; qkv = q, k, v
    /// [3, H, N, d]; ln1 = the target block's normalised input [N, D] (plus its qkv weights once);
    /// ln1-int8 = ln1 in 8 bits with a float16 scale per channel, half of ln1's bytes at a KL of
    /// ~2e-5 nats per row (BENCHMARKS.md) [default: the store's own encoding when --out exists;
    /// else ln1 where the teacher has its ln1 tensor and qkv weights (every exported teacher
    /// does): the most faithful encoding in BENCHMARKS.md; else qkv].
    #[arg(long, value_parser = encoding_parser())]
    encoding: Option<Encoding>,
    /// The relation store to create or add to: a folder, or an `s3://BUCKET/PREFIX` URL on
    /// S3-compatible object storage (endpoint, region and credentials from the standard AWS_*
    /// variables, e.g. AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "STORE", required = true)]
    out: Option<PathBuf>,
    /// Run seed of the view recipe.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Handle only part i of n of the images (by relative path; other parts' files are never
    /// opened), e.g. 0/4 [default: the launcher's
    /// part: torchrun's RANK/WORLD_SIZE, Open MPI's OMPI_COMM_WORLD_RANK/SIZE or Slurm's
    /// SLURM_PROCID/SLURM_NTASKS, times a Slurm job array's SLURM_ARRAY_TASK_*; else 0/1, every
    /// image]. A given --shard wins over the launcher.
    #[arg(long, value_name = "i/n")]
    shard: Option<Shard>,
    /// Views per teacher batch.
    #[arg(long, value_name = "B", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Threads decoding and rendering images [default: one per core].
    #[arg(long, value_name = "N")]
    render_threads: Option<usize>,
    /// Rows per store shard [default: about 32 MB of targets].
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    shard_rows: Option<u64>,
    /// Least seconds between two checkpoints of the segment.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    checkpoint_secs: f64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The relation store (a folder or an `s3://BUCKET/PREFIX` URL).
    store: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The relation store (a folder or an `s3://BUCKET/PREFIX` URL).
    store: PathBuf,
    /// Source image folder, to recompute sampled rows (needs --teacher).
    #[arg(long, value_name = "DIR", requires = "teacher")]
    images: Option<PathBuf>,
    #[command(flatten)]
    teacher: TeacherArgs,
    /// Rows to recompute, spread evenly over the store.
    #[arg(long, value_name = "M", default_value_t = 8)]
    sample: usize,
}

/// `maps`, `qkv`, `ln1` or `ln1-int8`, listed in `--help`.
fn encoding_parser() -> impl clap::builder::TypedValueParser<Value = Encoding> {
    let names = Encoding::ALL.map(Encoding::name);
    clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(names), |name| {
        name.parse::<Encoding>().expect("one of the listed names")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none() && cli.run.teacher.teacher.is_none() {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the following required argument was not provided: --teacher <ONNX>",
            )
            .exit();
    }
    let result = match cli.command {
        Some(Command::Inspect(args)) => run_inspect(&args),
        Some(Command::Verify(args)) => run_verify(&args),
        Some(Command::Teacher(args)) => export::run(&args).map(|()| true),
        Some(Command::Bench(args)) => bench_cli::run(&args).map(|()| true),
        None => run_extract(&cli.run).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("extract: error: {}", one_sentence(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by `: `, leaving out causes its message already quotes.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
    }
    message
}

/// Loads the teacher named by `args` (the caller checked that --teacher is given), fetching the
/// graph's own relation maps with each batch when `relation_maps` (the `maps` encoding).
fn load_teacher(args: &TeacherArgs, relation_maps: bool) -> anyhow::Result<Teacher> {
    let path = args.teacher.as_deref().context("--teacher is required")?;
    let config = args
        .config
        .as_deref()
        .map(TeacherConfig::load)
        .transpose()?;
    let options = TeacherOptions {
        device: args.device,
        threads: args.threads,
        extra_outputs: Vec::new(),
        relation_maps,
    };
    let teacher = Teacher::load(path, config.as_ref(), &options)?;
    let runtime = Runtime::get()?;
    eprintln!(
        "extract: teacher {} ({}, fingerprint {}) on {} (ONNX Runtime {} from {})",
        path.display(),
        teacher.geometry().arch,
        teacher.fingerprint().short(),
        teacher.provider().name(),
        runtime.version(),
        runtime.library().display()
    );
    Ok(teacher)
}

fn run_extract(args: &RunArgs) -> anyhow::Result<()> {
    if !(args.checkpoint_secs >= 0.0 && args.checkpoint_secs.is_finite()) {
        anyhow::bail!("--checkpoint-secs must be a non-negative number of seconds");
    }
    // The launcher's variables first: a malformed RANK is refused before the teacher loads.
    let chosen = choose_shard(args.shard, &|name| std::env::var(name).ok()).context(
        "no part of the images for this process from the launcher (--shard i/n gives one)",
    )?;
    if let Some(note) = &chosen.note {
        eprintln!("extract: {note}");
    }
    let out = args.out.clone().expect("clap requires --out");
    // An existing store keeps its encoding (opening refuses a missing folder: a new store).
    let existing = RelationStore::open(&out)
        .ok()
        .map(|store| store.header().encoding);
    let asked = args.encoding.or(existing);
    let mut teacher = load_teacher(&args.teacher, asked == Some(Encoding::Maps))?;
    let encoding = asked.unwrap_or_else(|| {
        if teacher.check_encoding(Encoding::Ln1).is_ok() {
            Encoding::Ln1
        } else {
            Encoding::Qkv
        }
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let options = ExtractOptions {
        images: args.images.clone().expect("clap requires --images"),
        views: args.views.expect("clap requires --views"),
        encoding,
        out,
        seed: args.seed,
        shard: chosen.shard,
        batch: args.batch as usize,
        render_threads: args.render_threads.unwrap_or(cores),
        shard_rows: args.shard_rows,
        checkpoint_every: Duration::from_secs_f64(args.checkpoint_secs),
        progress: !args.quiet,
    };
    let summary = extract(&mut teacher, &options)?;
    eprintln!(
        "extract: {} views written, {} skipped as present, {} bad images, {:.0} bytes/view, {:.1} s ({:.2} views/s){}",
        summary.views_written,
        summary.views_present,
        summary.bad.len(),
        summary.bytes_per_view.unwrap_or(0.0),
        summary.wall_s,
        summary.views_per_s,
        summary.segment.as_deref().map(|s| format!(", segment {s}")).unwrap_or_default()
    );
    for bad in &summary.bad {
        eprintln!("extract: bad image {}: {}", bad.path, bad.reason);
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn run_inspect(args: &InspectArgs) -> anyhow::Result<bool> {
    let report = inspect(&args.store)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(true)
}

fn run_verify(args: &VerifyArgs) -> anyhow::Result<bool> {
    let mut teacher = match (&args.images, &args.teacher.teacher) {
        // Maps are fetched whatever the store's encoding: a `maps` store is then recomputed
        // exactly as extract computed it, and the other encodings ignore them.
        (Some(_), Some(_)) => Some(load_teacher(&args.teacher, true)?),
        (None, Some(_)) => anyhow::bail!("--teacher needs --images to recompute rows"),
        _ => None,
    };
    let recompute = match (teacher.as_mut(), &args.images) {
        (Some(teacher), Some(images)) => Some(Recompute {
            teacher,
            images: images.clone(),
            sample: args.sample,
        }),
        _ => None,
    };
    let outcome = verify(&args.store, recompute)?;
    for p in &outcome.store_problems {
        eprintln!("extract: {p}");
    }
    for p in &outcome.recompute_problems {
        let at = p
            .path
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        eprintln!("extract: row {}{at}: {}", p.row, p.reason);
    }
    eprintln!(
        "extract: {} rows in {} segments checked, {} recomputed (max map difference {:.2e}): {}",
        outcome.rows,
        outcome.segments,
        outcome.recomputed,
        outcome.max_map_difference,
        if outcome.is_ok() {
            "ok"
        } else {
            "PROBLEMS FOUND"
        }
    );
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(outcome.is_ok())
}
