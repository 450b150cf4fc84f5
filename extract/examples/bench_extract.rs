//! Extraction throughput against the bare teacher, side by side, per encoding.
//!
//! For the same views and batch size it measures
//!
//! - **teacher only**: [`Teacher::run`] (ONNX Runtime plus copying q/k/v out) on views rendered
//!   beforehand, i.e. the ceiling the pipeline can reach;
//! - **extract**: the whole pipeline ([`extract`]: walk, hash, decode, render, teacher, encode,
//!   write, commit) into a fresh store, once per encoding;
//!
//! and prints views/s of each and their ratio as JSON lines, plus a table on stderr.
//!
//! ```text
//! cargo run -p tinymim-extract --example bench_extract -- [VIEWS_PER_IMAGE] [BATCH] [THREADS]
//! ```
//!
//! Defaults: 4 views of each of the 10 cached photos, batch 8, ONNX Runtime's default threads.
//! Needs the asset cache (scripts/setup.sh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tinymim_extract::pipeline::{extract, ExtractOptions};
use tinymim_extract::source::{walk, Shard};
use tinymim_extract::teacher::{Teacher, TeacherConfig, TeacherOptions};
use tinymim_formats::view::sample_views;
use tinymim_formats::{Encoding, SourceImage, ViewRecipe};

fn cache() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"))
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| a.parse().expect("a positive integer argument"))
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let views = arg(1, 4) as u32;
    let batch = arg(2, 8);
    let threads = std::env::args().nth(3).map(|t| t.parse()).transpose()?;
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let onnx = cache().join("teachers/vit_s_focus.onnx");
    let config = TeacherConfig::load(&workspace.join("configs/teachers/dinov2-small.toml"))?;
    let photos = cache().join("photos");
    let options = TeacherOptions {
        threads,
        ..Default::default()
    };
    let mut teacher = Teacher::load(&onnx, Some(&config), &options)?;
    let g = teacher.geometry();

    // Teacher only: every view rendered first, then timed batches through the session.
    let recipe = ViewRecipe::default();
    let mut pixels = Vec::new();
    for file in walk(&photos)? {
        let (image, hash) = SourceImage::open(&file.path)?;
        for view in sample_views(&recipe, &hash, image.width(), image.height(), views) {
            let mut out = vec![0.0; teacher.pixels_per_view()];
            image.render(&view, g.image_size, &g.normalization, &mut out)?;
            pixels.extend(out);
        }
    }
    let per_view = teacher.pixels_per_view();
    let total = pixels.len() / per_view;
    eprintln!(
        "{total} views of {}×{} px, batch {batch}, provider {}, threads {}",
        g.image_size,
        g.image_size,
        teacher.provider().name(),
        threads.map_or("default".to_string(), |t: usize| t.to_string())
    );
    eprintln!(
        "{:<8} {:>14} {:>14} {:>7} {:>12}",
        "encoding", "extract v/s", "teacher v/s", "ratio", "bytes/view"
    );

    for encoding in Encoding::ALL {
        // Timed right before each extraction, so that both see the same machine load.
        let started = Instant::now();
        for chunk in pixels.chunks(batch * per_view) {
            teacher.run(chunk, chunk.len() / per_view)?;
        }
        let bare = total as f64 / started.elapsed().as_secs_f64();
        let dir = tempfile::tempdir()?;
        let run = ExtractOptions {
            images: photos.clone(),
            views,
            encoding,
            out: dir.path().join("relations.zarr"),
            seed: 0,
            shard: Shard::ALL,
            batch,
            render_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shard_rows: None,
            checkpoint_every: Duration::from_secs(10),
            progress: false,
        };
        let summary = extract(&mut teacher, &run)?;
        assert_eq!(summary.views_written as usize, total, "every view written");
        let ratio = summary.views_per_s / bare;
        eprintln!(
            "{:<8} {:>14.2} {:>14.2} {:>7.3} {:>12.0}",
            encoding.name(),
            summary.views_per_s,
            bare,
            ratio,
            summary.bytes_per_view.unwrap_or(0.0)
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "extract",
                "encoding": encoding.name(),
                "views": total,
                "batch": batch,
                "provider": teacher.provider().name(),
                "extract_views_per_s": summary.views_per_s,
                "teacher_views_per_s": bare,
                "ratio": ratio,
                "bytes_per_view": summary.bytes_per_view,
            })
        );
    }
    Ok(())
}
