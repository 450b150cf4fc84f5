//! Helpers shared by the train integration tests.
#![allow(dead_code, unused_imports)] // each test uses its own subset

use candle_core::{Tensor, D};
use rand_chacha::ChaCha8Rng;
pub use tinymim_train::testing::{max_rel_err, randn, rng};

/// Synthetic teacher maps `[B, H, N, N]`: softmax rows of random logits.
pub fn teacher_maps(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    candle_nn::ops::softmax(&(randn(shape, rng) * 2.0).unwrap(), D::Minus1).unwrap()
}
