//! Relation maps on the CPU, exactly as `TINYMIM.md` defines them.
//!
//! `R_QK = softmax(q·kᵀ·d^-½)`, `R_VV = softmax(v·vᵀ·d^-½)` over keys, per head. These functions
//! are the reference the other phases are checked against, and they decode any stored
//! [`Encoding`] back to relation maps.

use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis};
use rayon::prelude::*;

use crate::encoding::{Encoding, Targets};
use crate::store::types::check_geometry;
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
    assert_eq!(q.shape(), k.shape(), "q and k must share one shape");
    assert_eq!(q.shape(), v.shape(), "q and v must share one shape");
    let (heads, tokens, head_dim) = q.dim();
    let scale = (head_dim as f32).powf(-0.5);
    let mut out = Array4::<f32>::zeros((2, heads, tokens, tokens));
    let map_len = tokens * tokens;
    if map_len == 0 {
        return out;
    }
    out.as_slice_mut()
        .expect("a fresh array is contiguous")
        .par_chunks_mut(map_len)
        .enumerate()
        .for_each(|(i, map)| {
            let (relation, head) = (i / heads, i % heads);
            let (a, b) = if relation == 0 { (&q, &k) } else { (&v, &v) };
            let logits = a
                .index_axis(Axis(0), head)
                .dot(&b.index_axis(Axis(0), head).t());
            softmax_rows_into(&logits, scale, map);
        });
    out
}

/// Writes `softmax(scale · logits)` of every row of `logits` `[N, N]` into `out` (row-major),
/// subtracting each row's maximum first.
fn softmax_rows_into(logits: &Array2<f32>, scale: f32, out: &mut [f32]) {
    for (row, dst) in logits
        .rows()
        .into_iter()
        .zip(out.chunks_mut(logits.ncols()))
    {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
        let mut sum = 0.0f64;
        for (d, &x) in dst.iter_mut().zip(row.iter()) {
            *d = (x * scale - max).exp();
            sum += f64::from(*d);
        }
        let inv = (1.0 / sum) as f32;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
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
    let (tokens, dim) = ln1.dim();
    assert_eq!(weight.dim(), (3 * dim, dim), "qkv weight must be [3D, D]");
    assert_eq!(bias.len(), 3 * dim, "qkv bias must be [3D]");
    assert!(heads > 0 && dim % heads == 0, "heads must divide D");
    let qkv = ln1.dot(&weight.t()) + bias;
    qkv.into_shape_with_order((tokens, 3, heads, dim / heads))
        .expect("[N, 3D] splits into [N, 3, H, d]")
        .permuted_axes([1, 2, 0, 3])
        .as_standard_layout()
        .into_owned()
}

/// Decodes one row's stored targets in any encoding to relation maps `[2, H, N, N]` (f32).
///
/// `qkv` holds the target block's qkv weight and bias and is required for the encodings of
/// LN1(x) (`ln1`, `ln1-int8`). Targets of another length or element type than the encoding's,
/// or missing/misshapen parameters, are a [`StoreError`].
pub fn decode_maps(
    encoding: Encoding,
    targets: &Targets,
    geometry: &TeacherGeometry,
    qkv: Option<&QkvParams>,
) -> Result<Array4<f32>, StoreError> {
    check_geometry(geometry)?;
    encoding.check_row(
        geometry,
        targets,
        &format!("targets of one `{encoding}` row"),
    )?;
    let values = targets.to_f32(geometry.dim as usize);
    let shape: Vec<usize> = encoding
        .row_shape(geometry)
        .iter()
        .map(|&x| x as usize)
        .collect();
    match encoding {
        Encoding::Maps => Ok(Array4::from_shape_vec(
            (shape[0], shape[1], shape[2], shape[3]),
            values,
        )
        .expect("length checked above")),
        Encoding::Qkv => {
            let qkv = ArrayView4::from_shape((shape[0], shape[1], shape[2], shape[3]), &values)
                .expect("length checked above");
            Ok(maps_of_split_qkv(qkv))
        }
        Encoding::Ln1 | Encoding::Ln1Int8 => {
            let params = qkv.ok_or(StoreError::MissingQkvParams)?;
            let (tokens, dim) = (shape[0], shape[1]);
            let (weight, bias) = params.views(dim)?;
            let ln1 = ArrayView2::from_shape((tokens, dim), &values).expect("length checked above");
            let split = split_heads_qkv(ln1, weight, bias, geometry.heads as usize);
            Ok(maps_of_split_qkv(split.view()))
        }
    }
}

/// Relation maps of q, k, v stacked as `[3, H, N, d]`.
fn maps_of_split_qkv(qkv: ArrayView4<f32>) -> Array4<f32> {
    relation_maps(
        qkv.index_axis(Axis(0), 0),
        qkv.index_axis(Axis(0), 1),
        qkv.index_axis(Axis(0), 2),
    )
}
