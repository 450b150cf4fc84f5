//! `train bench step`: the student's hot paths on a device, in images per second — the
//! distillation forward (every block but the last in full, the last only LN1 + qkv), a whole
//! distillation step (forward, relation loss, backward, AdamW) and the full forward of
//! [`Student::features`]. `scripts/bench_torch_step.py` times PyTorch's step on the same model,
//! batch and precision.

use candle_core::Device;
use serde::Serialize;

use super::{precision_name, random_step_inputs, seconds_per_call};
use crate::{
    AdamW, AdamWConfig, Distiller, LrSchedule, MicroBatch, Precision, Result, Student, TrainRng,
    VitConfig,
};

/// What to time.
#[derive(Clone, Debug)]
pub struct StepConfig {
    /// The device.
    pub device: Device,
    /// The student's preset name (for the report).
    pub preset: String,
    /// The student architecture.
    pub student: VitConfig,
    /// Views per step.
    pub batch: usize,
    /// Relation heads of the targets (the adaptive block's).
    pub heads: usize,
    /// Timed calls of each, after one warm-up call.
    pub reps: usize,
    /// Precision of the matrix products.
    pub precision: Precision,
    /// Time the step alone (what `scripts/profile_step.py` samples).
    pub step_only: bool,
}

/// The timings: one JSON line of `train bench step`.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Always `student_step`.
    pub check: &'static str,
    /// Always `candle` (PyTorch's script writes `pytorch-eager` / `pytorch-compile`).
    pub engine: &'static str,
    /// The device, in words.
    pub device: String,
    /// The student preset.
    pub preset: String,
    /// Views per step.
    pub batch: usize,
    /// Relation heads.
    pub relation_heads: usize,
    /// `f32`, `bf16` or `tf32`.
    pub precision: String,
    /// Timed calls of each.
    pub reps: usize,
    /// Seconds per distillation step.
    pub step_s: f64,
    /// Images per second of the step.
    pub images_per_s: f64,
    /// Seconds per distillation forward (NaN with `step_only`).
    pub distillation_forward_s: f64,
    /// Seconds per full forward (NaN with `step_only`).
    pub full_forward_s: f64,
}

impl std::fmt::Display for StepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}, batch {}, relation heads {}, {} on {}, {} reps after a warm-up",
            self.preset, self.batch, self.relation_heads, self.precision, self.device, self.reps
        )?;
        for (what, secs) in [
            ("distillation forward", self.distillation_forward_s),
            ("full forward (features)", self.full_forward_s),
            ("distillation step (fwd+bwd+AdamW)", self.step_s),
        ] {
            writeln!(
                f,
                "  {what:<36} {:>9.1} ms  {:>8.2} images/s",
                secs * 1e3,
                self.batch as f64 / secs
            )?;
        }
        write!(
            f,
            "  truncated / full forward time: {:.3}\n  step / distillation forward:   {:.2}",
            self.distillation_forward_s / self.full_forward_s,
            self.step_s / self.distillation_forward_s
        )
    }
}

/// Times the forwards (unless `step_only`) and the step.
pub fn time_step(config: &StepConfig) -> Result<StepReport> {
    crate::heap::keep_freed_memory();
    crate::device::configure_gemm(config.precision);
    let dev = &config.device;
    let mut student = Student::new(&config.student, config.heads, 0, dev)?;
    student.set_precision(config.precision);
    let (pixels, t_qk, t_vv) = random_step_inputs(
        config.batch,
        config.student.image_size,
        config.heads,
        config.student.tokens(),
        0,
        dev,
    )?;
    let (relation, full) = if config.step_only {
        (f64::NAN, f64::NAN)
    } else {
        (
            seconds_per_call(dev, config.reps, || student.relation_logits(&pixels, None))?,
            seconds_per_call(dev, config.reps, || student.features(&pixels))?,
        )
    };
    let mut distiller = Distiller {
        optimizer: AdamW::new(student.params(), AdamWConfig::default()),
        student,
        schedule: LrSchedule::scaled(1.5e-4, config.batch, 1.0, 10.0, 100),
        rng: TrainRng::from_seed(0),
        step: 0,
        clip_grad: None,
    };
    let micro = [MicroBatch {
        pixels: &pixels,
        target_qk: &t_qk,
        target_vv: &t_vv,
    }];
    let step = seconds_per_call(dev, config.reps, || distiller.step(&micro))?;
    Ok(StepReport {
        check: "student_step",
        engine: "candle",
        device: crate::device::describe(dev),
        preset: config.preset.clone(),
        batch: config.batch,
        relation_heads: config.heads,
        precision: precision_name(config.precision),
        reps: config.reps,
        step_s: step,
        images_per_s: config.batch as f64 / step,
        distillation_forward_s: relation,
        full_forward_s: full,
    })
}
