//! `train eval`: the relation loss of an exported student on a relation store, typically of
//! images it never trained on, beside its random-initialised twin's on the same views, so that
//! the distillation objective's generalisation is measured rather than assumed.
//!
//! Every committed row of the store is visited once in canonical order, rendered as training
//! renders it (the stored view; no jitter, no drop path), and the loss terms are averaged over
//! all `views · H · N` query rows, so the result does not depend on the batch size.

use std::path::PathBuf;

use candle_core::Device;
use serde::Serialize;

use crate::data::load_rows;
use crate::export::load_with_twin;
use crate::loss::relation_loss_parts;
use crate::run::{Prepared, Result, RunConfig, RunError, SourceConfig};
use crate::Precision;

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// The relation store.
    pub store: PathBuf,
    /// Its source images; default: the root the store recorded.
    pub images: Option<PathBuf>,
    /// An exported `model.safetensors` (its `config.json` beside it).
    pub model: PathBuf,
    /// Views per forward pass.
    pub batch: usize,
    /// Device.
    pub device: Device,
    /// Seed of the random-initialised twin; default: the one the export records.
    pub twin_seed: Option<u64>,
}

/// Mean relation loss terms over a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LossTerms {
    /// L_QK.
    pub loss_qk: f64,
    /// L_VV.
    pub loss_vv: f64,
    /// L = L_QK + L_VV.
    pub loss: f64,
}

/// The evaluation's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Views evaluated (every committed row).
    pub views: usize,
    /// The exported student's loss.
    pub student: LossTerms,
    /// Its random-initialised twin's loss.
    pub twin: LossTerms,
    /// The twin's initialisation seed.
    pub twin_seed: u64,
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let terms = |t: &LossTerms| {
            format!(
                "L {:.4} (L_QK {:.4}, L_VV {:.4})",
                t.loss, t.loss_qk, t.loss_vv
            )
        };
        write!(
            f,
            "relation loss over {} views: student {}; random-init twin (seed {}) {}; student/twin \
             {:.1}%",
            self.views,
            terms(&self.student),
            self.twin_seed,
            terms(&self.twin),
            100.0 * self.student.loss / self.twin.loss
        )
    }
}

/// Runs the evaluation.
pub fn evaluate(config: &EvalConfig) -> Result<EvalReport> {
    if config.batch == 0 {
        return Err(RunError::Setup("--batch must be at least 1".to_string()));
    }
    let (student, twin, twin_seed) =
        load_with_twin(&config.model, &config.device, config.twin_seed)?;
    let prepared = Prepared::new(&RunConfig {
        source: SourceConfig::Cache {
            store: config.store.clone(),
            relation_heads: Some(student.relation_heads()),
        },
        images: config.images.clone(),
        student: student.config().clone(),
        epochs: 1,
        batch: 1,
        fit_batch: false,
        accum: 1,
        base_lr: 0.0,
        warmup_epochs: 0.0,
        weight_decay: 0.0,
        clip: None,
        seed: 0,
        jitter: false,
        group_views: false,
        checkpoint_every: None,
        max_steps: None,
        resume: false,
        device: config.device.clone(),
        out: PathBuf::new(),
        progress: false,
        precision: Precision::F32,
        prefetch: 0,
    })?;
    let spec = prepared.loader_spec(0, 0, 0);
    let mut sums = [[0f64; 2]; 2];
    for rows in prepared.rows.rows().chunks(config.batch) {
        let batch = load_rows(&spec, rows.to_vec(), 0)?;
        let tensors = prepared.tensors(&batch, &config.device)?;
        for (model, sum) in [&student, &twin].into_iter().zip(&mut sums) {
            let (qk, vv) = model.relation_logits(&tensors.pixels, None)?;
            let (l_qk, l_vv) =
                relation_loss_parts(&qk, &vv, &tensors.target_qk, &tensors.target_vv)?;
            // Each term is a mean over the batch's rows: weight it by the batch's views.
            let views = rows.len() as f64;
            sum[0] += views * l_qk.to_scalar::<f32>()? as f64;
            sum[1] += views * l_vv.to_scalar::<f32>()? as f64;
        }
    }
    let views = prepared.rows.len();
    let mean = |[qk, vv]: [f64; 2]| LossTerms {
        loss_qk: qk / views as f64,
        loss_vv: vv / views as f64,
        loss: (qk + vv) / views as f64,
    };
    Ok(EvalReport {
        views,
        student: mean(sums[0]),
        twin: mean(sums[1]),
        twin_seed,
    })
}
