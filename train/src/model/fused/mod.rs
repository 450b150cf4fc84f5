//! Fused CPU kernels for the row-wise operations of the student: softmax, log-softmax, the
//! relation KL, LayerNorm, linear layers (product and bias in one op), a bias, the exact (erf)
//! GELU, a residual branch under drop path's per-sample scaling, whole attention heads
//! (products, softmax and their backward) and the products of many small matrices (the
//! relation logits of every head).
//!
//! Built from candle's primitive ops, each of these costs several passes over memory and as
//! many temporaries forward, and more backward (candle's `Mul` backward, for one, computes
//! the gradient of both operands even when one is a constant). Here each is one
//! [`CustomOp1`]/[`CustomOp2`]/[`CustomOp3`] whose forward is one pass over each row and
//! whose backward is another fused op of one pass. candle's own fused `softmax_last_dim` and
//! `layer_norm` cannot be used: they have no backward (DEPENDENCIES.md).
//!
//! The kernels run over blocks of rows on candle's CPU worker pool ([`crate::pool`]).
//!
//! Every public function here dispatches: the fused kernel for f32 tensors on the CPU, the
//! composite candle ops (the reference path, and the one CUDA runs) otherwise. Results agree
//! with the composite path up to float32 rounding (`train/tests/fused_ops.rs`).
//!
//! The folder's rooms: [`lanes`] holds the lane arithmetic every kernel shares (branch-free
//! exp, ln and erf, sums and maxima folded in 8 lanes); each other file is one op family with
//! its reference tests beside it ([`softmax`]: softmax, log-softmax and the relation KL;
//! [`attention`]: whole attention heads; [`products`]: the batched relation products and the
//! single-threaded strided product under them; [`linear`]: linear layers, a bias and the column
//! sums of their gradients; [`norm`]: LayerNorm; [`elementwise`]: GELU and drop path's
//! per-sample scaling). This file is the dispatch: which tensors take the kernels at all.

mod attention;
mod elementwise;
mod lanes;
mod linear;
mod norm;
mod products;
#[cfg(test)]
mod reference;
mod softmax;

pub use attention::attention;
pub use elementwise::{add_scaled_samples, gelu_erf};
pub(crate) use lanes::dot;
pub use linear::{add_bias, linear};
pub use norm::layer_norm;
pub use products::scaled_products_nt;
pub use softmax::{kl_rows, log_softmax_last_dim, softmax_last_dim};

/// Whether this CPU runs the kernels, and how many this thread has run (tests show with it that
/// the kernels, not the composite path, computed a result).
pub use crate::pool::{kernel_runs, kernels_supported};

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

use std::cell::Cell;

use crate::pool::par_blocks;

/// Rows per parallel task: rows are short (≈ 200 values), so per-row tasks would cost more
/// in scheduling than in arithmetic.
const MIN_ROWS_PER_TASK: usize = 16;

thread_local! {
    /// Whether ops built on this thread may take the fused kernels ([`composite_only`]).
    static KERNELS_ON: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with the fused kernels off on this thread: every op `f` builds, its backward and
/// AdamW's update take candle's composite path, the reference the kernels are tested against
/// (a whole training step among them, `train/tests/model.rs`).
pub fn composite_only<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the switch when `f` returns or unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNELS_ON.set(self.0);
        }
    }
    let _restore = Restore(KERNELS_ON.replace(false));
    f()
}

/// Whether `x` takes the fused path: f32 on the CPU, on a CPU that runs the kernels
/// ([`kernels_supported`]: AVX2 and FMA on x86-64), outside [`composite_only`].
pub(crate) fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && kernels_supported() && KERNELS_ON.get()
}

/// The f32 values of a contiguous operand and its row width (last dimension).
pub(crate) fn rows_of<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> Result<(&'a [f32], usize)> {
    let data = s.as_slice::<f32>()?;
    let (start, end) = l
        .contiguous_offsets()
        .ok_or(candle_core::Error::RequiresContiguous { op })?;
    Ok((&data[start..end], l.dims().last().copied().unwrap_or(1)))
}

/// A new `len`-value buffer whose rows of `width` values (the last one possibly shorter) are
/// filled by `f(row index, row)`, in parallel ([`par_blocks`]; `f` writes every value).
pub(super) fn par_rows(
    len: usize,
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    par_blocks(len, width, MIN_ROWS_PER_TASK, f)
}

#[cfg(test)]
mod tests {
    use super::reference::normal;
    use crate::model::fused;

    #[test]
    fn fused_forward_keeps_the_shape_and_needs_no_gradient() {
        let x = normal(&[3, 4, 5], 21, 1.0);
        for y in [
            fused::softmax_last_dim(&x, 0.5).unwrap(),
            fused::log_softmax_last_dim(&x).unwrap(),
            fused::layer_norm(
                &x,
                &x.get(0).unwrap().get(0).unwrap(),
                &x.get(1).unwrap().get(0).unwrap(),
                1e-6,
            )
            .unwrap(),
            fused::add_bias(&x, &x.get(0).unwrap().get(0).unwrap()).unwrap(),
            fused::gelu_erf(&x).unwrap(),
        ] {
            assert_eq!(y.dims(), x.dims());
        }
        let t = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert_eq!(fused::kl_rows(&x, &t).unwrap().dims(), &[3, 4]);
        let rows: Vec<Vec<f32>> = fused::softmax_last_dim(&x, 0.5)
            .unwrap()
            .sum(2)
            .unwrap()
            .to_vec2()
            .unwrap();
        for v in rows.iter().flatten() {
            assert!((v - 1.0).abs() < 1e-6, "softmax rows sum to 1");
        }
    }
}
