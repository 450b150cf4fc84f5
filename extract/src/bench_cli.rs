//! `extract bench …`: the command line of [`tinymim_extract::bench`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tinymim_extract::bench::{extraction_vs_bare, random_teacher, BenchOptions};
use tinymim_extract::export::WeightDtype;
use tinymim_extract::teacher::{Teacher, TeacherOptions};
use tinymim_formats::Encoding;

use crate::{encoding_parser, TeacherArgs};

/// Options of `extract bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub teacher: TeacherArgs,
    /// Instead of --teacher: a teacher of this built-in preset (mae-vit-large, mae-vit-base)
    /// exported on the spot from random weights, for speed alone.
    #[arg(long, value_name = "PRESET", conflicts_with = "teacher")]
    pub random_teacher: Option<String>,
    /// The random teacher's target block [default: the preset's].
    #[arg(long, requires = "random_teacher")]
    pub block: Option<usize>,
    /// How the random teacher stores its weights.
    #[arg(long, value_enum, default_value_t = WeightDtype::Float16)]
    pub dtype: WeightDtype,
    /// Source image folder.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Views per image.
    #[arg(long, default_value_t = 4)]
    pub views: u32,
    /// Views per teacher batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Encoding of the pipeline's store.
    #[arg(long, value_parser = encoding_parser(), default_value = "ln1")]
    pub encoding: Encoding,
    /// Threads that decode and render images [default: one per core].
    #[arg(long, value_name = "N")]
    pub render_threads: Option<usize>,
}

/// Runs the comparison in a temporary folder and prints its JSON line.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let options = TeacherOptions {
        device: args.teacher.device,
        threads: args.teacher.threads,
        extra_outputs: Vec::new(),
        relation_maps: args.encoding == Encoding::Maps,
    };
    let mut teacher = match (&args.random_teacher, &args.teacher.teacher) {
        (Some(preset), _) => {
            let onnx = random_teacher(preset, args.block, args.dtype, dir.path())?;
            Teacher::load(&onnx, None, &options)?
        }
        (None, Some(_)) => crate::load_teacher(&args.teacher, options.relation_maps)?,
        (None, None) => {
            anyhow::bail!("extract bench needs --teacher ONNX or --random-teacher PRESET")
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (report, _) = extraction_vs_bare(
        &mut teacher,
        &BenchOptions {
            images: args.images.clone(),
            views: args.views,
            batch: args.batch,
            encoding: args.encoding,
            render_threads: args.render_threads.unwrap_or(cores),
        },
        &dir.path().join("relations.zarr"),
    )?;
    eprintln!(
        "extract bench: {} on {}, {} views in batches of {}: pipeline {:.1} views/s, bare \
         session {:.1} views/s, ratio {:.3}",
        report.teacher,
        report.provider,
        report.views,
        report.batch,
        report.extract_views_per_s,
        report.teacher_views_per_s,
        report.ratio
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
