//! Checks that a distillation step on a device equals the step on the CPU: the same student
//! (same seed: parameters are drawn on the host), the same pixels, targets and drop-path draws;
//! the loss and every parameter's gradient are compared, in f32 and in bf16 autocast.
//!
//! Tolerances: f32 — loss and each gradient within 1e-4 relative (‖g_dev − g_cpu‖ / ‖g_cpu‖);
//! bf16 — within 2e-2 relative (bfloat16 keeps 8 bits of mantissa; the two backends round
//! their products differently). With `--device cpu` (the dry run of scripts/gpu_check.sh) both
//! sides are the CPU, which checks the check itself. Prints one JSON line per precision and
//! exits non-zero when one fails.
//!
//! ```text
//! device_check --device cuda:0 [--preset vit-tiny] [--batch 8] [--heads 12]
//! ```

mod common;

use candle_core::{Device, Tensor};
use tinymim_train::dist::Part;
use tinymim_train::{
    relation_loss_parts, Gradients, Precision, SampleDraws, Student, TrainRng, VitConfig,
};

/// Loss and gradients of one step of `student` (drop path drawn from `seed`).
fn loss_and_grads(
    student: &Student,
    inputs: &(Tensor, Tensor, Tensor),
    seed: u64,
) -> candle_core::Result<(f64, Gradients)> {
    let mut rng = TrainRng::from_seed(seed);
    let mut draws = SampleDraws::new(&mut rng, Part::WHOLE, inputs.0.dims()[0]);
    let (qk, vv) = student
        .relation_logits(&inputs.0, Some(&mut draws))
        .map_err(candle_core::Error::wrap)?;
    let (l_qk, l_vv) =
        relation_loss_parts(&qk, &vv, &inputs.1, &inputs.2).map_err(candle_core::Error::wrap)?;
    let loss = (l_qk + l_vv)?;
    let grads = Gradients::collect(student.params(), &loss.backward()?);
    Ok((loss.to_scalar::<f32>()? as f64, grads))
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64 on the CPU.
fn relative_error(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?;
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok(diff / norm.max(f64::MIN_POSITIVE))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = common::device();
    let preset = common::flag("--preset").unwrap_or_else(|| "vit-tiny".into());
    let batch = common::number("--batch", 8);
    let heads = common::number("--heads", 12);
    let config = VitConfig::preset(&preset)?;
    let inputs_cpu = common::random_step_inputs(
        batch,
        config.image_size,
        heads,
        config.tokens(),
        7,
        &Device::Cpu,
    )?;
    let inputs_dev = (
        inputs_cpu.0.to_device(&device)?,
        inputs_cpu.1.to_device(&device)?,
        inputs_cpu.2.to_device(&device)?,
    );
    let mut failed = false;
    for (precision, tolerance) in [(Precision::F32, 1e-4), (Precision::Bf16, 2e-2)] {
        tinymim_train::device::configure_gemm(precision);
        let mut on_cpu = Student::new(&config, heads, 0, &Device::Cpu)?;
        let mut on_dev = Student::new(&config, heads, 0, &device)?;
        on_cpu.set_precision(precision);
        on_dev.set_precision(precision);
        let (loss_cpu, grads_cpu) = loss_and_grads(&on_cpu, &inputs_cpu, 3)?;
        let (loss_dev, grads_dev) = loss_and_grads(&on_dev, &inputs_dev, 3)?;
        let loss_err = (loss_dev - loss_cpu).abs() / loss_cpu.abs();
        let (mut worst, mut worst_name, mut compared) = (0f64, String::new(), 0);
        for (name, g_cpu) in grads_cpu.iter() {
            let Some(g_dev) = grads_dev.get(name) else {
                eprintln!("device_check: {name} has a gradient on the CPU only");
                failed = true;
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
        let pass = loss_err <= tolerance
            && worst <= tolerance
            && compared == grads_dev.iter().count()
            && compared > 0;
        failed |= !pass;
        println!(
            "{}",
            serde_json::json!({
                "check": "step_parity",
                "device": tinymim_train::device::describe(&device),
                "preset": preset,
                "batch": batch,
                "relation_heads": heads,
                "precision": format!("{precision:?}").to_lowercase(),
                "loss_cpu": loss_cpu,
                "loss_device": loss_dev,
                "loss_rel_err": loss_err,
                "gradients_compared": compared,
                "max_grad_rel_err": worst,
                "worst_gradient": worst_name,
                "tolerance": tolerance,
                "pass": pass,
            })
        );
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
