//! Training throughput side by side, same student, batch and views, in one process:
//!
//! 1. **cache**: targets read from a relation store (`maps`, f16) written beforehand;
//! 2. **online**: targets computed every step by the teacher in candle (TinyMIM's set-up);
//! 3. **synthetic**: pixels and targets fixed in memory, no loader: the step alone, the
//!    ceiling the other two are measured against.
//!
//! The timing is `train bench throughput`'s ([`tinymim_train::bench::throughput`]); this
//! example adds what that command cannot: a store and an online teacher written on the spot
//! from a random-weight teacher, and the cache/online speed-up against the FLOP-ratio bound.
//!
//! The teacher is a random-weight ViT (MAE layout, sin-cos position embedding) of the size
//! asked for; the images are the asset cache's photos when present, synthetic ones otherwise.
//!
//! ```text
//! cargo run --release -p tinymim-train --example bench_train -- [--steps 11] [--batch 16]
//!     [--views 2] [--teacher-dim 384] [--teacher-depth 12] [--teacher-heads 6]
//!     [--device cpu|cuda:N] [--precision f32|bf16|tf32] [--json]
//! ```

mod common;
#[path = "../tests/loop_fixture/mod.rs"]
mod loop_fixture;

use std::path::PathBuf;
use std::time::Instant;

use tinymim_train::bench::throughput;
use tinymim_train::config::VitConfig;
use tinymim_train::online::TeacherOptions;
use tinymim_train::run::{RunConfig, SourceConfig};

/// The asset cache's photos, if fetched.
fn photos() -> Option<PathBuf> {
    let cache = std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"));
    let dir = cache.join("photos");
    dir.is_dir().then_some(dir)
}

fn main() {
    tinymim_train::heap::keep_freed_memory();
    let steps = common::number("--steps", 11) as u64;
    let batch = common::number("--batch", 16);
    let views = common::number("--views", 2) as u32;
    let heads = common::number("--teacher-heads", 6);
    let teacher_config = VitConfig {
        dim: common::number("--teacher-dim", 384),
        depth: common::number("--teacher-depth", 12),
        heads,
        mlp_dim: 4 * common::number("--teacher-dim", 384),
        patch: 16,
        image_size: 224,
        drop_path: 0.0,
    };
    let student = VitConfig::preset("vit-tiny").unwrap();
    let device = common::device();
    let precision = common::precision();
    let dir = tempfile::tempdir().unwrap();
    let images = photos().unwrap_or_else(|| {
        let d = dir.path().join("images");
        loop_fixture::write_images(&d, 10);
        d
    });
    let teacher =
        loop_fixture::write_teacher(&dir.path().join("teacher"), &teacher_config, heads, 1);
    let store = dir.path().join("relations.zarr");
    let began = Instant::now();
    loop_fixture::write_store(&store, &images, &teacher, heads, views, 0);
    println!(
        "teacher D {} depth {} heads {}, student vit-tiny, batch {batch}, {steps} steps per mode, \
         images {}; store written in {:.1} s",
        teacher_config.dim,
        teacher_config.depth,
        heads,
        images.display(),
        began.elapsed().as_secs_f64()
    );

    let cache = RunConfig {
        source: SourceConfig::Cache {
            store,
            relation_heads: None,
        },
        images: Some(images.clone()),
        student: student.clone(),
        epochs: 1000,
        batch,
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
        max_steps: Some(steps),
        resume: false,
        device: device.clone(),
        out: dir.path().join("cache-run"),
        progress: false,
        prefetch: 4,
        precision,
    };
    let online = RunConfig {
        source: SourceConfig::Online {
            teacher,
            options: TeacherOptions {
                heads: Some(heads),
                target_block: None,
                image_size: None,
            },
            views,
        },
        out: dir.path().join("online-run"),
        ..cache.clone()
    };
    let reports = throughput::measure(&[("cache", cache), ("online", online)]).unwrap();
    if common::switch("--json") {
        for r in &reports {
            println!("{}", serde_json::to_string(r).unwrap());
        }
        return;
    }
    println!("{}", throughput::table(&reports));
    let speed_up = reports[1].step_s / reports[0].step_s;
    let student_step = 3.0 * distillation_forward_gflop(&student);
    let bound = (student_step + distillation_forward_gflop(&teacher_config)) / student_step;
    println!(
        "cache / online speed-up: {speed_up:.2}×; FLOP-ratio bound {bound:.2}× (student step \
         ≈ 3 × forward = {student_step:.2} GFLOP/view, teacher forward {:.2} GFLOP/view): \
         {:.2} of the bound",
        distillation_forward_gflop(&teacher_config),
        speed_up / bound
    );
}

/// GFLOP per view (a multiply-add counts 2) of the distillation forward of a ViT: patch
/// embedding, every block but the last in full (qkv, attention products, proj, MLP), and the
/// last block's qkv and two relation products. Norms, softmax and GELU are not counted.
fn distillation_forward_gflop(c: &VitConfig) -> f64 {
    let (n, d) = (c.tokens() as f64, c.dim as f64);
    let patch = 2.0 * (c.grid() * c.grid()) as f64 * (3 * c.patch * c.patch) as f64 * d;
    let products = 4.0 * n * n * d;
    let full_block = 8.0 * n * d * d + 4.0 * n * d * c.mlp_dim as f64 + products;
    let last_block = 6.0 * n * d * d + products;
    (patch + (c.depth - 1) as f64 * full_block + last_block) / 1e9
}
