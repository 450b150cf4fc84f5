//! The teacher's own features for a probe, run through ONNX Runtime as `extract` runs it:
//! the tensors its config lists under `[[features]]` (each block's output, the final norm),
//! else its target block's `ln1`; pooled like the student's.

use std::path::Path;

use tinymim_extract::teacher::{Teacher, TeacherConfig, TeacherOptions};
use tinymim_formats::{DeviceSpec as Device, Normalization};

use super::{render_batch, Pooled, BATCH};
use crate::data::FoundImage;
use crate::run::{Result, RunError};

/// A teacher loaded for feature extraction.
pub struct TeacherFeatures {
    teacher: Teacher,
    /// Report names of the fetched tensors, in fetch order.
    names: Vec<String>,
    size: u32,
    normalization: Normalization,
    /// No `[[features]]` listed: the target block's ln1 is the one feature tensor.
    from_ln1: bool,
}

impl TeacherFeatures {
    /// Loads the ONNX teacher at `model` (with its `config` for a third-party model) on
    /// `device`, fetching its `[[features]]` tensors, or its `ln1` when it lists none.
    pub fn load(model: &Path, config: Option<&Path>, device: Device) -> Result<TeacherFeatures> {
        let config = config.map(TeacherConfig::load).transpose()?;
        let listed = config
            .as_ref()
            .map(|c| c.features.clone())
            .unwrap_or_default();
        let options = TeacherOptions {
            device,
            threads: None,
            extra_outputs: listed.iter().map(|f| f.tensor.clone()).collect(),
            relation_maps: false,
        };
        let teacher = Teacher::load(model, config.as_ref(), &options)?;
        let g = teacher.geometry();
        let names = if listed.is_empty() {
            vec![format!("block {} input (ln1)", g.target_block)]
        } else {
            listed.into_iter().map(|f| f.name).collect()
        };
        Ok(TeacherFeatures {
            size: g.image_size,
            normalization: g.normalization,
            from_ln1: options.extra_outputs.is_empty(),
            teacher,
            names,
        })
    }

    /// The report names of the feature tensors.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Pooled features of `images`, one [`Pooled`] per feature tensor (in [`Self::names`]
    /// order).
    pub fn features(&mut self, images: &[&FoundImage]) -> Result<Vec<Pooled>> {
        let mut pooled = vec![Pooled::default(); self.names.len()];
        for chunk in images.chunks(BATCH) {
            let pixels = render_batch(chunk, self.size, &self.normalization)?;
            let batch = self.teacher.run(&pixels, chunk.len())?;
            let tensors = if self.from_ln1 {
                let ln1 = batch.ln1.ok_or_else(|| {
                    RunError::Setup(format!(
                        "{}: the teacher lists no `[[features]]` tensors and provides no ln1, \
                         so there is nothing to probe",
                        self.teacher.path().display()
                    ))
                })?;
                vec![ln1.into_dyn()]
            } else {
                batch.extra
            };
            for ((name, tokens), out) in self.names.iter().zip(&tensors).zip(&mut pooled) {
                let shape = tokens.shape();
                if shape.len() != 3 || shape[0] != chunk.len() || shape[1] < 2 {
                    return Err(RunError::Setup(format!(
                        "{}: feature tensor {name:?} has shape {shape:?}, not [B, N, D] with a \
                         class token and patches",
                        self.teacher.path().display()
                    )));
                }
                for view in tokens.outer_iter() {
                    let rows: Vec<Vec<f32>> = view
                        .outer_iter()
                        .map(|r| r.iter().copied().collect())
                        .collect();
                    out.push_tokens(&rows);
                }
            }
        }
        Ok(pooled)
    }
}
