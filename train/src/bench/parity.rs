//! `train bench parity`: a distillation step on a device equals the step on the CPU. The same
//! student (same seed: parameters are drawn on the host), the same pixels, targets and
//! drop-path draws; the loss and every parameter's gradient are compared, in f32 and in bf16
//! autocast.
//!
//! Tolerances: f32 — loss and each gradient within 1e-4 relative (‖g_dev − g_cpu‖ / ‖g_cpu‖);
//! bf16 — within 2e-2 relative (bfloat16 keeps 8 bits of mantissa; the two backends round
//! their products differently). With the CPU as the device (the dry run of
//! `scripts/gpu_check.sh`) both sides are the CPU, which checks the check itself.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{precision_name, random_step_inputs};
use crate::dist::Part;
use crate::{
    relation_loss_parts, Gradients, Precision, Result, SampleDraws, Student, TrainRng, VitConfig,
};

/// What to compare.
#[derive(Clone, Debug)]
pub struct ParityConfig {
    /// The device checked against the CPU.
    pub device: Device,
    /// The student's preset name (for the report) and architecture.
    pub preset: String,
    /// The student architecture.
    pub student: VitConfig,
    /// Views in the step.
    pub batch: usize,
    /// Relation heads of the targets (the adaptive block's).
    pub heads: usize,
}

/// One precision's comparison: one JSON line of `train bench parity`.
#[derive(Clone, Debug, Serialize)]
pub struct ParityReport {
    /// Always `step_parity`.
    pub check: &'static str,
    /// The device, in words.
    pub device: String,
    /// The student preset.
    pub preset: String,
    /// Views in the step.
    pub batch: usize,
    /// Relation heads.
    pub relation_heads: usize,
    /// `f32` or `bf16`.
    pub precision: String,
    /// The loss on the CPU.
    pub loss_cpu: f64,
    /// The loss on the device.
    pub loss_device: f64,
    /// |loss_device − loss_cpu| / |loss_cpu|.
    pub loss_rel_err: f64,
    /// Parameters whose gradients were compared.
    pub gradients_compared: usize,
    /// The largest relative gradient error (NaN counts as the largest).
    pub max_grad_rel_err: f64,
    /// The parameter with that error.
    pub worst_gradient: String,
    /// Parameters with a gradient on one side only.
    pub one_sided: Vec<String>,
    /// The tolerance of this precision.
    pub tolerance: f64,
    /// Whether the loss and every gradient are within it.
    pub pass: bool,
}

/// Loss and gradients of one step of `student` (drop path drawn from `seed`).
fn loss_and_grads(
    student: &Student,
    inputs: &(Tensor, Tensor, Tensor),
    seed: u64,
) -> Result<(f64, Gradients)> {
    let mut rng = TrainRng::from_seed(seed);
    let mut draws = SampleDraws::new(&mut rng, Part::WHOLE, inputs.0.dims()[0]);
    let (qk, vv) = student.relation_logits(&inputs.0, Some(&mut draws))?;
    let (l_qk, l_vv) = relation_loss_parts(&qk, &vv, &inputs.1, &inputs.2)?;
    let loss = (l_qk + l_vv)?;
    let grads = Gradients::collect(student.params(), &loss.backward()?);
    Ok((loss.to_scalar::<f32>()? as f64, grads))
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64 on the CPU.
fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(diff / norm.max(f64::MIN_POSITIVE))
}

/// The comparison in f32 (tolerance 1e-4), then in bf16 (2e-2).
pub fn step_parity(config: &ParityConfig) -> Result<Vec<ParityReport>> {
    let student = &config.student;
    let cpu = random_step_inputs(
        config.batch,
        student.image_size,
        config.heads,
        student.tokens(),
        7,
        &Device::Cpu,
    )?;
    let on_device = (
        cpu.0.to_device(&config.device)?,
        cpu.1.to_device(&config.device)?,
        cpu.2.to_device(&config.device)?,
    );
    let mut reports = Vec::new();
    for (precision, tolerance) in [(Precision::F32, 1e-4), (Precision::Bf16, 2e-2)] {
        crate::device::configure_gemm(precision);
        let mut on_cpu = Student::new(student, config.heads, 0, &Device::Cpu)?;
        let mut on_dev = Student::new(student, config.heads, 0, &config.device)?;
        on_cpu.set_precision(precision);
        on_dev.set_precision(precision);
        let (loss_cpu, grads_cpu) = loss_and_grads(&on_cpu, &cpu, 3)?;
        let (loss_dev, grads_dev) = loss_and_grads(&on_dev, &on_device, 3)?;
        let loss_err = (loss_dev - loss_cpu).abs() / loss_cpu.abs();
        let (mut worst, mut worst_name, mut compared) = (0f64, String::new(), 0);
        let mut one_sided: Vec<String> = Vec::new();
        for (name, g_cpu) in grads_cpu.iter() {
            let Some(g_dev) = grads_dev.get(name) else {
                one_sided.push(name.to_string());
                continue;
            };
            let err = relative_error(g_dev, g_cpu)?;
            compared += 1;
            // A NaN error counts as the worst (and fails the check).
            if err.is_nan() || err > worst {
                worst = err;
                worst_name = name.to_string();
            }
        }
        one_sided.extend(
            grads_dev
                .iter()
                .filter(|(name, _)| grads_cpu.get(name).is_none())
                .map(|(name, _)| name.to_string()),
        );
        let pass =
            loss_err <= tolerance && worst <= tolerance && one_sided.is_empty() && compared > 0;
        reports.push(ParityReport {
            check: "step_parity",
            device: crate::device::describe(&config.device),
            preset: config.preset.clone(),
            batch: config.batch,
            relation_heads: config.heads,
            precision: precision_name(precision),
            loss_cpu,
            loss_device: loss_dev,
            loss_rel_err: loss_err,
            gradients_compared: compared,
            max_grad_rel_err: worst,
            worst_gradient: worst_name,
            one_sided,
            tolerance,
            pass,
        });
    }
    Ok(reports)
}
