//! Times the student's hot paths on the CPU: the distillation forward (every block but the
//! last in full, the last only LN1 + qkv), a full distillation step (forward, relation loss,
//! backward, AdamW) and the full forward of [`Student::features`], and prints images per
//! second and the ratio of the truncated forward to the full one.
//!
//! `cargo run -p tinymim-train --release --example student_speed -- [preset] [batch] [relation heads]`
//! (defaults: vit-tiny, 8, 12). Numbers from a dev build are not representative of candle's
//! release speed except for the optimised numeric crates.

use std::time::Instant;

use candle_core::{Device, Tensor, D};
use tinymim_train::{
    AdamW, AdamWConfig, Distiller, LrSchedule, MicroBatch, Student, TrainRng, VitConfig,
};

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tinymim_train::heap::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map(String::as_str).unwrap_or("vit-tiny");
    let batch: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let heads: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(12);
    let config = VitConfig::preset(preset)?;
    let dev = Device::Cpu;
    let student = Student::new(&config, heads, 0, &dev)?;
    let s = config.image_size;
    let n = config.tokens();
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &dev)?;
    let maps = |seed: f64| -> candle_core::Result<Tensor> {
        let logits = (Tensor::randn(0f32, 1.0, (batch, heads, n, n), &dev)? + seed)?;
        candle_nn::ops::softmax(&logits, D::Minus1)
    };
    let (t_qk, t_vv) = (maps(0.0)?, maps(1.0)?);
    let reps = 3;

    let relation = time(reps, || student.relation_logits(&pixels, None).unwrap());
    let full = time(reps, || student.features(&pixels).unwrap());
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
    let step = time(reps, || distiller.step(&micro).unwrap());

    println!(
        "{preset}, batch {batch}, relation heads {heads}, N = {n}, {reps} reps after a warm-up"
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
