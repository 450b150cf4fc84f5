//! `train bench throughput`: training throughput side by side, same student, batch and steps,
//! in one process — each given run (from a relation store, or with the teacher online) against
//! **synthetic** targets: pixels and targets fixed in memory, no loader, the step alone, the
//! ceiling the others are measured against. Each mode's speed is its median step time after a
//! first, warm-up step (whose loader start and first allocations no later step pays), so the
//! order of the modes does not matter.

use std::time::Instant;

use serde::Serialize;

use super::{precision_name, random_step_inputs};
use crate::metrics::{read_metrics, METRICS_FILE};
use crate::run::{train_prepared, Prepared, Result, RunConfig, RunError};
use crate::{AdamW, AdamWConfig, Distiller, LrSchedule, MicroBatch, Student, TrainRng};

/// One mode's figures: one JSON line of `train bench throughput`.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    /// Always `training_throughput`.
    pub check: &'static str,
    /// The run's name (`cache`, `online`) or `synthetic`.
    pub mode: String,
    /// The device, in words.
    pub device: String,
    /// Precision of the matrix products.
    pub precision: String,
    /// Views per step.
    pub batch: usize,
    /// Steps timed (the first is the warm-up).
    pub steps: u64,
    /// Median seconds per step after the first.
    pub step_s: f64,
    /// Views per second at that step time.
    pub views_per_s: f64,
    /// Share of the run's loop time spent waiting for data (0 for synthetic).
    pub data_wait_share: f64,
    /// Synthetic step time over this mode's: 1 means the mode runs at the step's own speed.
    pub vs_synthetic: f64,
}

/// Trains each run for its `max_steps` (which must be at least 2), then times the same number
/// of bare steps on synthetic targets with the first run's student, batch and relation heads.
pub fn measure(runs: &[(&str, RunConfig)]) -> Result<Vec<ThroughputReport>> {
    let Some((_, first)) = runs.first() else {
        return Ok(Vec::new());
    };
    let mut measured = Vec::new();
    let mut synthetic = None;
    for (name, config) in runs {
        let prepared = Prepared::new(config)?;
        let batch = prepared.plan.batch;
        let summary = train_prepared(config, &prepared)?;
        let path = config.out.join(METRICS_FILE);
        let metrics = read_metrics(&path).map_err(|source| RunError::Io { path, source })?;
        let seconds: Vec<f64> = metrics
            .iter()
            .map(|m| batch as f64 / m.views_per_s)
            .collect();
        let wait = summary.data_wait_s / summary.seconds.max(1e-9);
        measured.push((
            name.to_string(),
            batch,
            median_after_warm_up(&seconds)?,
            wait,
        ));
        synthetic.get_or_insert((prepared.relation_heads, batch, metrics.len() as u64));
    }
    let (heads, batch, steps) = synthetic.expect("one run at least");
    let s = median_after_warm_up(&synthetic_step_seconds(first, heads, batch, steps)?)?;
    measured.push(("synthetic".to_string(), batch, s, 0.0));
    Ok(measured
        .into_iter()
        .map(|(mode, batch, seconds, wait)| ThroughputReport {
            check: "training_throughput",
            mode,
            device: crate::device::describe(&first.device),
            precision: precision_name(first.precision),
            batch,
            steps,
            step_s: seconds,
            views_per_s: batch as f64 / seconds,
            data_wait_share: wait,
            vs_synthetic: s / seconds,
        })
        .collect())
}

/// The reports as a table, a line per mode.
pub fn table(reports: &[ThroughputReport]) -> String {
    let mut out = String::from("mode       s/step   views/s   data-wait share   vs synthetic");
    for r in reports {
        out += &format!(
            "\n{:<10} {:>6.3} {:>9.2} {:>15.1} % {:>13.2}×",
            r.mode,
            r.step_s,
            r.views_per_s,
            r.data_wait_share * 100.0,
            r.vs_synthetic
        );
    }
    out
}

/// The median of per-step seconds, leaving out the first (warm-up) step.
fn median_after_warm_up(seconds: &[f64]) -> Result<f64> {
    let mut rest = seconds.get(1..).unwrap_or_default().to_vec();
    if rest.is_empty() {
        return Err(RunError::Setup(
            "throughput needs at least 2 steps per mode (the first is the warm-up)".into(),
        ));
    }
    rest.sort_by(f64::total_cmp);
    let mid = rest.len() / 2;
    Ok(if rest.len() % 2 == 1 {
        rest[mid]
    } else {
        (rest[mid - 1] + rest[mid]) / 2.0
    })
}

/// Seconds of each bare step of `config`'s student on fixed in-memory pixels and targets.
fn synthetic_step_seconds(
    config: &RunConfig,
    heads: usize,
    batch: usize,
    steps: u64,
) -> Result<Vec<f64>> {
    let (student, device) = (&config.student, &config.device);
    crate::device::configure_gemm(config.precision);
    let mut model = Student::new(student, heads, 0, device)?;
    model.set_precision(config.precision);
    let (pixels, qk, vv) = random_step_inputs(
        batch,
        student.image_size,
        heads,
        student.tokens(),
        1,
        device,
    )?;
    let mut distiller = Distiller {
        optimizer: AdamW::new(model.params(), AdamWConfig::default()),
        student: model,
        schedule: LrSchedule::scaled(1.5e-4, batch, 1.0, 1000.0, 1),
        rng: TrainRng::from_seed(1),
        step: 0,
        clip_grad: None,
    };
    let micro = [MicroBatch {
        pixels: &pixels,
        target_qk: &qk,
        target_vv: &vv,
    }];
    (0..steps)
        .map(|_| {
            let began = Instant::now();
            distiller.step(&micro)?;
            device.synchronize()?;
            Ok(began.elapsed().as_secs_f64())
        })
        .collect()
}
