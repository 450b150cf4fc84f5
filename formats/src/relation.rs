//! Relation maps on the CPU, exactly as `TINYMIM.md` defines them.
//!
//! `R_QK = softmax(q·kᵀ·d^-½)`, `R_VV = softmax(v·vᵀ·d^-½)` over keys, per head. These functions
//! are the reference the other phases are checked against, and they decode any stored
//! [`Encoding`] back to relation maps.

use half::f16;
use ndarray::{Array4, ArrayView1, ArrayView2, ArrayView3};

use crate::encoding::Encoding;
use crate::store::{QkvParams, StoreError};
use crate::teacher::TeacherGeometry;

/// Relation maps of one view: q, k, v `[H, N, d]` → `[2, H, N, N]` holding
/// `(softmax_keys(q kᵀ · d^-½), softmax_keys(v vᵀ · d^-½))`.
///
/// The softmax subtracts each row's maximum (numerically stable); heads run in parallel.
///
/// # Panics
/// If q, k and v do not share one shape (a programming error, not user input).
pub fn relation_maps(q: ArrayView3<f32>, k: ArrayView3<f32>, v: ArrayView3<f32>) -> Array4<f32> {
    let _ = (q, k, v);
    todo!()
}

/// The target block's q, k and v split into heads: `ln1` `[N, D]` (the block's normalised input
/// X̂), `weight` `[3D, D]`, `bias` `[3D]` → `[3, H, N, d]`.
///
/// `qkv = X̂ Wᵀ + b`; the first D rows of W give q, the next D k, the last D v; head h is
/// channels `[h·d, (h+1)·d)` of each.
///
/// # Panics
/// If the shapes disagree or `heads` does not divide D (a programming error, not user input).
pub fn split_heads_qkv(
    ln1: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    bias: ArrayView1<f32>,
    heads: usize,
) -> Array4<f32> {
    let _ = (ln1, weight, bias, heads);
    todo!()
}

/// Decodes one row's stored targets in any encoding to relation maps `[2, H, N, N]` (f32).
///
/// `qkv` holds the target block's qkv weight and bias and is required for [`Encoding::Ln1`].
/// A wrong target length or missing/misshapen parameters is a [`StoreError`].
pub fn decode_maps(
    encoding: Encoding,
    targets: &[f16],
    geometry: &TeacherGeometry,
    qkv: Option<&QkvParams>,
) -> Result<Array4<f32>, StoreError> {
    let _ = (encoding, targets, geometry, qkv);
    todo!()
}
