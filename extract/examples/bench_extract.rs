//! Extraction throughput against the bare teacher, side by side, per encoding.
//!
//! For the same views and batch size it measures
//!
//! - **teacher only**: [`Teacher::run`] (ONNX Runtime plus copying q/k/v out) on views rendered
//!   beforehand, after one warm-up batch, i.e. the ceiling the pipeline can reach
//!   (`tinymim_extract::bench`, which `extract bench` times the same way);
//! - **extract**: the whole pipeline ([`extract`]: walk, hash, decode, render, teacher, encode,
//!   write, commit) into a fresh store, once per encoding;
//!
//! and prints views/s of each and their ratio as JSON lines, plus a table on stderr.
//!
//! It also measures what each encoding's storage (float16, or 8 bits for `ln1-int8`) costs in
//! fidelity: for a sample of stored rows it re-renders the row's view, runs the teacher on it
//! and computes the exact f32 relation maps (`relation_maps`, TINYMIM.md), decodes the stored
//! row to maps, and reports the mean over rows of KL(exact ‖ decoded) (each row's KL is the mean
//! over its 2·H·N query rows of the sum over keys, as in the loss) and the largest absolute
//! error of a probability (`common/fidelity.rs`). A decoded probability of exactly 0 (only
//! `maps` stores them: values at or under 2⁻²⁵ round to 0 in float16) is counted as 2⁻²⁵, the
//! largest value that rounds to 0; the share of such entries is reported beside it.
//!
//! ```text
//! cargo run -p tinymim-extract --example bench_extract -- [VIEWS_PER_IMAGE] [BATCH] [THREADS]
//! ```
//!
//! Defaults: 4 views of each of the 10 cached photos, batch 8, ONNX Runtime's default threads.
//! Needs the asset cache (scripts/setup.sh).

use std::path::Path;
use std::time::Duration;

use ndarray::{Array4, Axis};

#[path = "common/assets.rs"]
mod assets;
#[path = "common/fidelity.rs"]
mod fidelity;
use assets::{arg, cache, dinov2_teacher};
use fidelity::Fidelity;

use tinymim_extract::bench::{bare_views_per_s, render_all};
use tinymim_extract::pipeline::{extract, ExtractOptions};
use tinymim_extract::source::Shard;
use tinymim_extract::teacher::{Teacher, TeacherOptions};
use tinymim_formats::{relation_maps, Encoding, RelationStore, SourceImage};

/// Stored rows whose fidelity is measured per encoding.
const FIDELITY_ROWS: usize = 24;

/// Re-runs the teacher on `FIDELITY_ROWS` rows of the store at `store` (images under
/// `photos`) and compares their exact maps with the decoded stored ones.
fn fidelity(teacher: &mut Teacher, store: &Path, photos: &Path) -> anyhow::Result<Fidelity> {
    let reader = RelationStore::open(store)?.reader()?;
    let g = teacher.geometry();
    let step = (reader.len() / FIDELITY_ROWS).max(1);
    let rows: Vec<usize> = (0..reader.len())
        .step_by(step)
        .take(FIDELITY_ROWS)
        .collect();
    let mut pixels = vec![0.0; rows.len() * teacher.pixels_per_view()];
    for (&i, out) in rows
        .iter()
        .zip(pixels.chunks_mut(teacher.pixels_per_view()))
    {
        let meta = reader.row(i);
        let entry = reader
            .image(&meta.image)
            .expect("every row's image is recorded");
        let (image, _) = SourceImage::open(&photos.join(&entry.path))?;
        image.render(&meta.view, g.image_size, &g.normalization, out)?;
    }
    let exact = teacher.run(&pixels, rows.len())?;
    let mut fidelity = Fidelity::default();
    for (b, &i) in rows.iter().enumerate() {
        let at = |a: &Array4<f32>| a.index_axis(Axis(0), b).to_owned();
        let truth = relation_maps(
            at(&exact.q).view(),
            at(&exact.k).view(),
            at(&exact.v).view(),
        );
        fidelity.add(&truth, &reader.maps(i)?);
    }
    Ok(fidelity)
}

fn main() -> anyhow::Result<()> {
    let views = arg(1, 4) as u32;
    let batch = arg(2, 8);
    let threads = std::env::args().nth(3).map(|t| t.parse()).transpose()?;
    let photos = cache().join("photos");
    let mut teacher = dinov2_teacher(&TeacherOptions {
        threads,
        ..Default::default()
    })?;
    let g = teacher.geometry();

    // Teacher only: every view rendered first, then timed batches through the session.
    let (pixels, total) = render_all(&teacher, &photos, views)?;
    eprintln!(
        "{total} views of {}×{} px, batch {batch}, provider {}, threads {}",
        g.image_size,
        g.image_size,
        teacher.provider().name(),
        threads.map_or("default".to_string(), |t: usize| t.to_string())
    );
    eprintln!(
        "{:<8} {:>14} {:>14} {:>7} {:>12} {:>14} {:>10} {:>10}",
        "encoding",
        "extract v/s",
        "teacher v/s",
        "ratio",
        "bytes/view",
        "KL(exact‖dec)",
        "max |err|",
        "zeros"
    );

    for encoding in Encoding::ALL {
        // Timed right before each extraction, so that both see the same machine load.
        let bare = bare_views_per_s(&mut teacher, &pixels, batch)?;
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
        let fid = fidelity(&mut teacher, &run.out, &photos)?;
        eprintln!(
            "{:<8} {:>14.2} {:>14.2} {:>7.3} {:>12.0} {:>14.3e} {:>10.2e} {:>9.3}%",
            encoding.name(),
            summary.views_per_s,
            bare,
            ratio,
            summary.bytes_per_view.unwrap_or(0.0),
            fid.mean_kl(),
            fid.max_abs,
            100.0 * fid.zero_share()
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
                "fidelity_rows": fid.rows,
                "mean_kl_exact_decoded": fid.mean_kl(),
                "max_abs_error": fid.max_abs,
                "decoded_zero_share": fid.zero_share(),
            })
        );
    }
    Ok(())
}
