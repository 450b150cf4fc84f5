//! Times the student's hot paths on a device (the CPU by default): the distillation forward (every block but the
//! last in full, the last only LN1 + qkv), a full distillation step (forward, relation loss,
//! backward, AdamW) and the full forward of [`Student::features`], and prints images per
//! second and the ratio of the truncated forward to the full one.
//!
//! `cargo run -p tinymim-train --release --example student_speed -- [--preset vit-tiny]
//! [--batch 8] [--heads 12] [--reps 3] [--device cpu|cuda:N] [--precision f32|bf16|tf32]
//! [--json] [--step-only]`; `--step-only` times the step alone (what scripts/profile_step.py
//! samples). Numbers from a dev build are not representative of candle's release speed except
//! for the optimised numeric crates.

use std::time::Instant;

mod common;

use candle_core::Device;
use tinymim_train::{
    AdamW, AdamWConfig, Distiller, LrSchedule, MicroBatch, Student, TrainRng, VitConfig,
};

/// Seconds per call of `f`, over `reps` calls after one warm-up call, the device drained
/// before the clock starts and stops (GPU work is asynchronous).
fn time<T>(device: &Device, reps: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    device.synchronize().expect("device synchronises");
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    device.synchronize().expect("device synchronises");
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tinymim_train::heap::keep_freed_memory();
    let preset = common::flag("--preset").unwrap_or_else(|| "vit-tiny".into());
    let batch = common::number("--batch", 8);
    let heads = common::number("--heads", 12);
    let reps = common::number("--reps", 3);
    let dev = common::device();
    let precision = common::precision();
    tinymim_train::device::configure_gemm(precision);
    let config = VitConfig::preset(&preset)?;
    let mut student = Student::new(&config, heads, 0, &dev)?;
    student.set_precision(precision);
    let n = config.tokens();
    let (pixels, t_qk, t_vv) =
        common::random_step_inputs(batch, config.image_size, heads, n, 0, &dev)?;

    let forwards = !common::switch("--step-only");
    let relation = if forwards {
        time(&dev, reps, || {
            student.relation_logits(&pixels, None).unwrap()
        })
    } else {
        f64::NAN
    };
    let full = if forwards {
        time(&dev, reps, || student.features(&pixels).unwrap().final_norm)
    } else {
        f64::NAN
    };
    let mut distiller = Distiller {
        optimizer: AdamW::new(student.params(), AdamWConfig::default()),
        student,
        schedule: LrSchedule::scaled(1.5e-4, batch, 1.0, 10.0, 100),
        rng: TrainRng::from_seed(0),
        step: 0,
        clip_grad: None,
    };
    let micro = [MicroBatch {
        pixels: &pixels,
        target_qk: &t_qk,
        target_vv: &t_vv,
    }];
    let step = time(&dev, reps, || distiller.step(&micro).unwrap());
    if common::switch("--json") {
        println!(
            "{}",
            serde_json::json!({
                "check": "student_step",
                "engine": "candle",
                "device": tinymim_train::device::describe(&dev),
                "preset": preset,
                "batch": batch,
                "relation_heads": heads,
                "precision": format!("{precision:?}").to_lowercase(),
                "reps": reps,
                "step_s": step,
                "images_per_s": batch as f64 / step,
                "distillation_forward_s": relation,
                "full_forward_s": full,
            })
        );
        return Ok(());
    }

    println!(
        "{preset}, batch {batch}, relation heads {heads}, N = {n}, {precision:?} on {}, {reps} \
         reps after a warm-up",
        tinymim_train::device::describe(&dev)
    );
    for (what, secs) in [
        ("distillation forward", relation),
        ("full forward (features)", full),
        ("distillation step (fwd+bwd+AdamW)", step),
    ] {
        println!(
            "  {what:<36} {:>9.1} ms  {:>8.2} images/s",
            secs * 1e3,
            batch as f64 / secs
        );
    }
    println!("  truncated / full forward time: {:.3}", relation / full);
    println!("  step / distillation forward:   {:.2}", step / relation);
    Ok(())
}
