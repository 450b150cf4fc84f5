//! One distillation step: relation loss over micro-batches, accumulated gradients, optional
//! clipping, an AdamW update at the scheduled learning rate.

use candle_core::{DType, Tensor};

use crate::dist::buckets::sum_over_world;
use crate::dist::World;
use crate::error::{Result, TrainError};
use crate::grads::Gradients;
use crate::loss::relation_loss_parts;
use crate::model::Student;
use crate::optim::AdamW;
use crate::rng::{SampleDraws, TrainRng};
use crate::schedule::LrSchedule;

/// Everything a run needs to continue exactly where it stopped; a checkpoint saves all of it.
/// Cloning shares the student's parameters (see [`Student`]); a checkpoint is the way to fork
/// a run.
#[derive(Clone, Debug)]
pub struct Distiller {
    /// The student being trained.
    pub student: Student,
    /// Its optimiser (moments included).
    pub optimizer: AdamW,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// The drop-path random stream.
    pub rng: TrainRng,
    /// Optimiser steps taken so far (the schedule's position).
    pub step: u64,
    /// Clip gradients to this global norm before each update (TinyMIM: none).
    pub clip_grad: Option<f64>,
}

/// One micro-batch: normalised pixels `[B, 3, S, S]` and the teacher's relation maps
/// `[B, H, N, N]` (probabilities).
#[derive(Clone, Copy, Debug)]
pub struct MicroBatch<'a> {
    /// Student input.
    pub pixels: &'a Tensor,
    /// Teacher R_QK.
    pub target_qk: &'a Tensor,
    /// Teacher R_VV.
    pub target_vv: &'a Tensor,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Mean relation loss L = L_QK + L_VV over the micro-batches (before the update).
    pub loss: f64,
    /// Its QK term.
    pub loss_qk: f64,
    /// Its VV term.
    pub loss_vv: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Distiller {
    /// One optimiser step over `micro` micro-batches of equal size: each micro-batch's loss
    /// is divided by their count and the gradients summed, so the update equals the one of a
    /// single batch holding them all (up to drop-path draws). An empty slice is an error.
    pub fn step(&mut self, micro: &[MicroBatch]) -> Result<StepReport> {
        let global = micro.first().map_or(0, |b| b.pixels.dims()[0]);
        self.step_in(micro, &World::single(), global)
    }

    /// [`Distiller::step`] as one process of `world`: `micro` holds this process's part
    /// ([`World::part`]) of each global micro-batch of `global` samples. Each part's loss is
    /// weighted by its share of the global micro-batch and the gradients and loss terms are
    /// summed over the world before clipping and AdamW, so every process takes the update of
    /// the global batch (the one-process step's, up to floating-point summation order).
    pub fn step_in(
        &mut self,
        micro: &[MicroBatch],
        world: &World,
        global: usize,
    ) -> Result<StepReport> {
        if micro.is_empty() {
            return Err(TrainError::EmptyStep);
        }
        let lr = self.schedule.lr_at(self.step);
        let share = 1.0 / micro.len() as f64;
        let part = world.part();
        let of_global = part.range(global).len() as f64 / global as f64;
        let mut grads = Gradients::default();
        // The loss terms stay on the device: the step reads back once (below), not twice per
        // micro-batch and once per gradient, so a GPU never waits for the host mid-step.
        let mut parts = Vec::with_capacity(2 * micro.len());
        for batch in micro {
            let mut draws = SampleDraws::new(&mut self.rng, part, global);
            let (qk, vv) = self
                .student
                .relation_logits(batch.pixels, Some(&mut draws))?;
            let (l_qk, l_vv) = relation_loss_parts(&qk, &vv, batch.target_qk, batch.target_vv)?;
            let (l_qk, l_vv) = if world.size() == 1 {
                (l_qk, l_vv)
            } else {
                ((l_qk * of_global)?, (l_vv * of_global)?)
            };
            let l = ((&l_qk + &l_vv)? * share)?;
            grads.accumulate(Gradients::collect(self.student.params(), &l.backward()?))?;
            parts.extend([l_qk.detach(), l_vv.detach()]);
        }
        let what = format!("the gradient sum of step {}", self.step + 1);
        let parts = sum_over_world(world, &mut grads, &Tensor::stack(&parts, 0)?, &what)?;
        // The step's one read-back: the loss terms and the squared gradient norm together.
        let loss_parts = parts.elem_count();
        let squared_norm = grads.squared_norm()?;
        let mut read = vec![parts.to_dtype(DType::F64)?];
        if let Some(sum) = &squared_norm {
            read.push(sum.reshape(1)?);
        }
        let values = Tensor::cat(&read, 0)?.to_vec1::<f64>()?;
        let grad_norm = if squared_norm.is_some() {
            values[loss_parts].sqrt()
        } else {
            0.0
        };
        if let Some(max) = self.clip_grad {
            grads.clip_to_norm(max, grad_norm)?;
        }
        self.optimizer.step(&grads, lr)?;
        self.step += 1;
        let mean = |first: usize| values[first..loss_parts].iter().step_by(2).sum::<f64>() * share;
        let (loss_qk, loss_vv) = (mean(0), mean(1));
        Ok(StepReport {
            loss: loss_qk + loss_vv,
            loss_qk,
            loss_vv,
            lr,
            grad_norm,
        })
    }
}
