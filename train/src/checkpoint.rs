//! Resumable checkpoints: one safetensors file holding the student's parameters and AdamW's
//! moments, with everything else (architecture, step, schedule, RNG position, the training
//! loop's own state) as JSON in its metadata. Written atomically.
//!
//! Tensors: `model.<param>`, `adamw.m.<param>`, `adamw.v.<param>` (timm parameter names).
//! Metadata key [`METADATA_KEY`]: the JSON of [`CheckpointMeta`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::atomic::{read, save_safetensors};
use crate::config::VitConfig;
use crate::distill::Distiller;
use crate::error::{Result, TrainError};
use crate::model::Student;
use crate::optim::{AdamW, AdamWConfig, Moments};
use crate::rng::{RngState, TrainRng};
use crate::schedule::LrSchedule;

/// Safetensors metadata key holding the checkpoint's JSON.
pub const METADATA_KEY: &str = "tinymim.checkpoint";
/// Value of [`CheckpointMeta::format`].
pub const FORMAT: &str = "tinymim-checkpoint";
/// Current [`CheckpointMeta::version`].
pub const VERSION: u32 = 1;

const MODEL: &str = "model.";
const FIRST_MOMENT: &str = "adamw.m.";
const SECOND_MOMENT: &str = "adamw.v.";

/// The non-tensor part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Layout version, [`VERSION`].
    pub version: u32,
    /// Student architecture.
    pub config: VitConfig,
    /// Heads of the adaptive last block.
    pub relation_heads: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// AdamW constants.
    pub adamw: AdamWConfig,
    /// Per-parameter AdamW step counts (bias correction), for parameters with moments.
    pub moment_steps: BTreeMap<String, u64>,
    /// Drop-path RNG position.
    pub rng: RngState,
    /// Gradient clipping norm, if any.
    pub clip_grad: Option<f64>,
    /// The training loop's own resumable state (data order, epoch, …), opaque here.
    pub loop_state: serde_json::Value,
}

/// A loaded checkpoint: the distiller, ready to continue, and the loop's saved state.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Student, optimiser, schedule, RNG and step, as saved.
    pub distiller: Distiller,
    /// What the training loop stored with [`Checkpoint::save`].
    pub loop_state: serde_json::Value,
}

impl Checkpoint {
    /// Saves `distiller` and `loop_state` to `path` atomically (temp file + rename).
    pub fn save(path: &Path, distiller: &Distiller, loop_state: &serde_json::Value) -> Result<()> {
        let student = &distiller.student;
        let moments = distiller.optimizer.state();
        let meta = CheckpointMeta {
            format: FORMAT.to_string(),
            version: VERSION,
            config: student.config().clone(),
            relation_heads: student.relation_heads(),
            step: distiller.step,
            schedule: distiller.schedule.clone(),
            adamw: distiller.optimizer.config().clone(),
            moment_steps: moments.iter().map(|(n, m)| (n.clone(), m.step)).collect(),
            rng: distiller.rng.state(),
            clip_grad: distiller.clip_grad,
            loop_state: loop_state.clone(),
        };
        let mut tensors: Vec<(String, Tensor)> = student
            .params()
            .iter()
            .map(|p| (format!("{MODEL}{}", p.name), p.var.as_tensor().clone()))
            .collect();
        for (name, m) in moments {
            tensors.push((format!("{FIRST_MOMENT}{name}"), m.m.clone()));
            tensors.push((format!("{SECOND_MOMENT}{name}"), m.v.clone()));
        }
        let json = serde_json::to_string(&meta).expect("checkpoint metadata serialises");
        save_safetensors(
            path,
            tensors,
            Some(HashMap::from([(METADATA_KEY.to_string(), json)])),
        )
    }

    /// Loads a checkpoint written by [`Checkpoint::save`] onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
        let bytes = read(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| invalid(path, format!("not a safetensors file: {e}")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| {
                invalid(
                    path,
                    format!("no `{METADATA_KEY}` metadata: not a tinymim checkpoint"),
                )
            })?;
        let meta: CheckpointMeta = serde_json::from_str(json)
            .map_err(|e| invalid(path, format!("bad `{METADATA_KEY}` metadata: {e}")))?;
        if meta.format != FORMAT || meta.version != VERSION {
            return Err(invalid(
                path,
                format!(
                    "checkpoint format {} v{} is not {FORMAT} v{VERSION}",
                    meta.format, meta.version
                ),
            ));
        }
        let origin = path.display().to_string();
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| invalid(path, format!("unreadable tensors: {e}")))?;
        let (model, first, second) = split_tensors(tensors, path)?;

        meta.config.validate(&origin)?;
        let student = Student::new(&meta.config, meta.relation_heads, 0, device)?;
        student.load_weights(&model, &origin)?;
        let mut state = BTreeMap::new();
        for (name, step) in &meta.moment_steps {
            let missing = |kind: &str| TrainError::MissingTensor {
                origin: origin.clone(),
                tensor: format!("{kind}{name}"),
            };
            let m = first
                .get(name)
                .ok_or_else(|| missing(FIRST_MOMENT))?
                .clone();
            let v = second
                .get(name)
                .ok_or_else(|| missing(SECOND_MOMENT))?
                .clone();
            state.insert(name.clone(), Moments { m, v, step: *step });
        }
        if let Some(extra) = first
            .keys()
            .chain(second.keys())
            .find(|n| !state.contains_key(*n))
        {
            return Err(invalid(
                path,
                format!("moments of `{extra}` without a step count"),
            ));
        }
        let optimizer = AdamW::with_state(student.params(), meta.adamw, state, &origin)?;
        let rng = TrainRng::from_state(&meta.rng)
            .ok_or_else(|| invalid(path, "bad RNG word position".to_string()))?;
        Ok(Checkpoint {
            distiller: Distiller {
                student,
                optimizer,
                schedule: meta.schedule,
                rng,
                step: meta.step,
                clip_grad: meta.clip_grad,
            },
            loop_state: meta.loop_state,
        })
    }
}

type TensorMap = HashMap<String, Tensor>;

/// Sorts a checkpoint's tensors by prefix into model weights and the two moments.
fn split_tensors(tensors: TensorMap, path: &Path) -> Result<(TensorMap, TensorMap, TensorMap)> {
    let (mut model, mut first, mut second) = (HashMap::new(), HashMap::new(), HashMap::new());
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix(MODEL) {
            model.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix(FIRST_MOMENT) {
            first.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix(SECOND_MOMENT) {
            second.insert(n.to_string(), t);
        } else {
            return Err(invalid(path, format!("unexpected tensor `{name}`")));
        }
    }
    Ok((model, first, second))
}

fn invalid(path: &Path, message: String) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    }
}
