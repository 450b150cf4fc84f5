//! The learning-rate schedule: linear warm-up, then cosine to a floor, per iteration.

use serde::{Deserialize, Serialize};

/// MAE/TinyMIM's schedule, evaluated at fractional epochs so it changes every iteration:
/// lr rises linearly from 0 to `peak_lr` over `warmup_epochs`, then follows a half cosine
/// from `peak_lr` down to `min_lr` at `epochs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// Learning rate at the end of training (TinyMIM: 0).
    pub min_lr: f64,
    /// Warm-up length in epochs (TinyMIM: 15).
    pub warmup_epochs: f64,
    /// Training length in epochs.
    pub epochs: f64,
    /// Optimiser steps per epoch (after gradient accumulation).
    pub steps_per_epoch: u64,
}

impl LrSchedule {
    /// The schedule with TinyMIM's linear scaling rule: peak lr = `base_lr` · `batch` / 256,
    /// where `batch` is the effective (accumulated) batch per optimiser step; floor 0.
    pub fn scaled(
        base_lr: f64,
        batch: usize,
        warmup_epochs: f64,
        epochs: f64,
        steps_per_epoch: u64,
    ) -> LrSchedule {
        LrSchedule {
            peak_lr: base_lr * batch as f64 / 256.0,
            min_lr: 0.0,
            warmup_epochs,
            epochs,
            steps_per_epoch: steps_per_epoch.max(1),
        }
    }

    /// The learning rate of optimiser step `step` (0-based), at epoch `step / steps_per_epoch`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let epoch = step as f64 / self.steps_per_epoch.max(1) as f64;
        if epoch < self.warmup_epochs {
            self.peak_lr * epoch / self.warmup_epochs
        } else {
            let span = (self.epochs - self.warmup_epochs).max(f64::MIN_POSITIVE);
            let progress = ((epoch - self.warmup_epochs) / span).min(1.0);
            self.min_lr
                + (self.peak_lr - self.min_lr)
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> LrSchedule {
        LrSchedule::scaled(1.5e-4, 4096, 15.0, 300.0, 100)
    }

    #[test]
    fn peak_follows_the_linear_scaling_rule() {
        assert_eq!(schedule().peak_lr, 1.5e-4 * 16.0);
    }

    #[test]
    fn warm_up_is_linear_in_fractional_epochs() {
        let s = schedule();
        assert_eq!(s.lr_at(0), 0.0);
        // Step 150 is epoch 1.5 of a 15-epoch warm-up: a tenth of the peak.
        assert!((s.lr_at(150) - 0.1 * s.peak_lr).abs() < 1e-15);
        assert!(
            s.lr_at(151) > s.lr_at(150),
            "changes every iteration, not every epoch"
        );
    }

    #[test]
    fn cosine_reaches_peak_half_and_zero() {
        let s = schedule();
        assert!((s.lr_at(1500) - s.peak_lr).abs() < 1e-15);
        // Epoch 157.5 is halfway through the cosine: cos(π/2) = 0, so half the peak.
        assert!((s.lr_at(15750) - 0.5 * s.peak_lr).abs() < 1e-12);
        assert!(s.lr_at(30000).abs() < 1e-15);
        assert!(
            s.lr_at(40000).abs() < 1e-15,
            "stays at the floor after the last epoch"
        );
    }
}
