//! Benchmark of `extract teacher`: export time of a ViT-B/16 teacher (random weights, 224 px,
//! target block 12) and the exported teacher's views per second through ONNX Runtime on CPU.
//!
//! ```text
//! cargo build --release -p tinymim-extract --bins --examples
//! target/release/examples/bench_export [--batch 8] [--iters 5] [--threads N]
//! ```
//!
//! (The dev profile works too, `target/debug/examples/bench_export`: ONNX Runtime is a prebuilt
//! library, so views/s do not depend on the profile; export time barely does.)
//!
//! The example writes a random ViT-B/16 checkpoint with timm names (`model.safetensors` plus a
//! `config.json`, as `train` exports students) into a temporary folder, runs the `extract`
//! binary built beside it to export float32 and float16 teachers, then loads each with
//! `extract`'s own teacher loader and times batches of random normalised pixels (one warm-up
//! batch first). Results go to stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use tinymim_extract::bench::write_random_checkpoint;
use tinymim_extract::teacher::{Teacher, TeacherOptions};
use tinymim_formats::vit::{ArchFile, ArchOverrides, VitArch};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| -> anyhow::Result<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .context("flag without value")?
                .parse()
                .context(name.to_string()),
            None => Ok(default),
        }
    };
    let batch = flag("--batch", 8)?;
    let iters = flag("--iters", 5)?;
    let threads = args
        .iter()
        .any(|a| a == "--threads")
        .then(|| flag("--threads", 0))
        .transpose()?;

    let extract = sibling_extract_binary()?;
    let dir = tempfile::tempdir()?;
    let arch = VitArch::resolve(
        &ArchOverrides::default(),
        &ArchFile::preset("mae-vit-base")?,
    )?;
    let checkpoint = write_random_checkpoint(&arch, dir.path())?;
    println!(
        "checkpoint: random ViT-B/16 ({:.0} MB safetensors)",
        std::fs::metadata(&checkpoint)?.len() as f64 / 1e6
    );

    for dtype in ["float32", "float16"] {
        let onnx = dir.path().join(format!("vit_b_{dtype}.onnx"));
        let started = Instant::now();
        let status = Command::new(&extract)
            .args(["teacher", "--checkpoint"])
            .arg(&checkpoint)
            .args(["--block", "12", "--dtype", dtype, "--out"])
            .arg(&onnx)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("extract teacher failed ({status})");
        }
        let export_s = started.elapsed().as_secs_f64();
        let bytes = std::fs::metadata(&onnx)?.len();

        let started = Instant::now();
        let options = TeacherOptions {
            threads,
            ..TeacherOptions::default()
        };
        let mut teacher = Teacher::load(&onnx, None, &options)?;
        let load_s = started.elapsed().as_secs_f64();
        let pixels = Tensor::randn(
            0f32,
            1.0,
            (batch * teacher.pixels_per_view(),),
            &Device::Cpu,
        )?
        .to_vec1::<f32>()?;
        teacher.run(&pixels, batch)?;
        let started = Instant::now();
        for _ in 0..iters {
            teacher.run(&pixels, batch)?;
        }
        let run_s = started.elapsed().as_secs_f64();
        println!(
            "{dtype}: export {export_s:.2} s ({:.0} MB), session load {load_s:.2} s, \
             {:.2} views/s on {} (batch {batch}, {iters} batches, {run_s:.1} s)",
            bytes as f64 / 1e6,
            (batch * iters) as f64 / run_s,
            teacher.provider().name(),
        );
    }
    Ok(())
}

/// The `extract` binary of the same build (`target/<profile>/extract`).
fn sibling_extract_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no profile folder")?;
    let extract = profile_dir.join("extract");
    if !extract.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p tinymim-extract --bins --examples`",
            extract.display()
        );
    }
    Ok(extract)
}
