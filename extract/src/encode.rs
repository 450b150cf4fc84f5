//! Teacher outputs → one row of stored targets per view, in the store's encoding.
//!
//! - `maps`: R_QK and R_VV `[2, H, N, N]`: the teacher graph's own maps when it computed them
//!   (every exported teacher does, on the device the teacher runs on), else formed from q, k, v
//!   with [`tinymim_formats::relation_maps`] (the reference definition), views in parallel;
//! - `qkv`: q, k, v stacked `[3, H, N, d]`;
//! - `ln1`: the target block's normalised input `[N, D]`;
//! - `ln1-int8`: the same in 8 bits with one scale per channel ([`tinymim_formats::quant`]).
//!
//! Every encoding but `ln1-int8` stores float16.

use half::f16;
use ndarray::Axis;
use rayon::prelude::*;
use tinymim_formats::quant::ln1_int8_row;
use tinymim_formats::{relation_maps, Encoding, Targets};

use crate::teacher::TeacherBatch;

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// An encoding of LN1(x) was asked of a batch without the ln1 tensor.
    #[error("the ln1 encodings need the teacher's ln1 tensor, which this batch lacks")]
    MissingLn1,
}

/// Encodes every view of `batch`: one row of targets per view.
pub fn encode_batch(encoding: Encoding, batch: &TeacherBatch) -> Result<Vec<Targets>, EncodeError> {
    let views = 0..batch.len();
    match encoding {
        Encoding::Maps if batch.maps.is_some() => {
            let (qk, vv) = batch.maps.as_ref().expect("checked");
            Ok(views
                .into_par_iter()
                .map(|i| {
                    let qk = qk.index_axis(Axis(0), i);
                    let vv = vv.index_axis(Axis(0), i);
                    to_f16(qk.iter().chain(vv.iter()))
                })
                .collect())
        }
        Encoding::Maps => Ok(views
            .into_par_iter()
            .map(|i| {
                let maps = relation_maps(
                    batch.q.index_axis(Axis(0), i),
                    batch.k.index_axis(Axis(0), i),
                    batch.v.index_axis(Axis(0), i),
                );
                to_f16(maps.iter())
            })
            .collect()),
        Encoding::Qkv => Ok(views
            .into_par_iter()
            .map(|i| {
                let q = batch.q.index_axis(Axis(0), i);
                let k = batch.k.index_axis(Axis(0), i);
                let v = batch.v.index_axis(Axis(0), i);
                to_f16(q.iter().chain(k.iter()).chain(v.iter()))
            })
            .collect()),
        Encoding::Ln1 => {
            let ln1 = batch.ln1.as_ref().ok_or(EncodeError::MissingLn1)?;
            Ok(views
                .into_par_iter()
                .map(|i| to_f16(ln1.index_axis(Axis(0), i).iter()))
                .collect())
        }
        Encoding::Ln1Int8 => {
            let ln1 = batch.ln1.as_ref().ok_or(EncodeError::MissingLn1)?;
            Ok(views
                .into_par_iter()
                .map(|i| ln1_int8_row(ln1.index_axis(Axis(0), i)))
                .collect())
        }
    }
}

fn to_f16<'a>(values: impl Iterator<Item = &'a f32>) -> Targets {
    Targets::Half(values.map(|&x| f16::from_f32(x)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Array4};

    /// The float16 values of a row.
    fn half(row: &Targets) -> &[f16] {
        match row {
            Targets::Half(values) => values,
            Targets::Int8 { .. } => panic!("an int8 row"),
        }
    }

    /// A batch of 2 views, H = 2, N = 3, d = 2 (D = 4), with distinct values everywhere.
    fn batch() -> TeacherBatch {
        let q = Array4::from_shape_fn((2, 2, 3, 2), |(b, h, n, d)| {
            (b * 100 + h * 10 + n * 2 + d) as f32 * 0.01
        });
        let k = q.mapv(|x| 0.5 - x);
        let v = q.mapv(|x| x * x);
        let ln1 = Array3::from_shape_fn((2, 3, 4), |(b, n, c)| (b * 12 + n * 4 + c) as f32 * 0.1);
        TeacherBatch {
            q,
            k,
            v,
            ln1: Some(ln1),
            maps: None,
            extra: Vec::new(),
        }
    }

    #[test]
    fn qkv_rows_stack_q_k_v_of_their_own_view() {
        let b = batch();
        let rows: Vec<Vec<f16>> = encode_batch(Encoding::Qkv, &b)
            .unwrap()
            .iter()
            .map(|r| half(r).to_vec())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].len(), 3 * 2 * 3 * 2);
        // Row 1, part k (index 1), head 1, token 2, channel 0.
        let at = 12 + 6 + 2 * 2;
        assert_eq!(rows[1][at], f16::from_f32(b.k[[1, 1, 2, 0]]));
        assert_eq!(rows[0][0], f16::from_f32(b.q[[0, 0, 0, 0]]));
    }

    #[test]
    fn maps_rows_are_row_stochastic_softmaxes_of_scaled_products() {
        let b = batch();
        let rows = encode_batch(Encoding::Maps, &b).unwrap();
        let rows: Vec<&[f16]> = rows.iter().map(half).collect();
        assert_eq!(rows[0].len(), 2 * 2 * 3 * 3);
        // Independent f64 reference for view 1, R_VV (index 1), head 0, query token 2.
        let (view, head, i, d) = (1, 0, 2, 2usize);
        let logits: Vec<f64> = (0..3)
            .map(|j| {
                (0..d)
                    .map(|c| b.v[[view, head, i, c]] as f64 * b.v[[view, head, j, c]] as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        for j in 0..3 {
            let want = (logits[j] - max).exp() / z;
            let got = rows[view][18 + head * 9 + i * 3 + j].to_f64();
            assert!((got - want).abs() < 1e-3, "j = {j}: {got} vs {want}");
        }
    }

    #[test]
    fn maps_rows_take_the_graphs_own_maps_when_fetched() {
        let mut b = batch();
        let computed = encode_batch(Encoding::Maps, &b).unwrap();
        // Maps as a graph would hand them over: distinct, recognisable values per view and part.
        let qk = Array4::from_shape_fn((2, 2, 3, 3), |(v, h, i, j)| {
            (v * 81 + h * 9 + i * 3 + j) as f32 / 256.0
        });
        let vv = qk.mapv(|x| 1.0 - x);
        b.maps = Some((qk.clone(), vv.clone()));
        let rows = encode_batch(Encoding::Maps, &b).unwrap();
        assert_eq!(rows[1].lens(), computed[1].lens());
        assert_eq!(half(&rows[1])[0], f16::from_f32(qk[[1, 0, 0, 0]]));
        assert_eq!(half(&rows[1])[18 + 9 + 4], f16::from_f32(vv[[1, 1, 1, 1]]));
        assert_ne!(rows, computed);
    }

    #[test]
    fn ln1_rows_copy_the_view_and_need_ln1() {
        let mut b = batch();
        let rows = encode_batch(Encoding::Ln1, &b).unwrap();
        assert_eq!(
            half(&rows[1])[5],
            f16::from_f32(b.ln1.as_ref().unwrap()[[1, 1, 1]])
        );
        b.ln1 = None;
        for encoding in [Encoding::Ln1, Encoding::Ln1Int8] {
            assert!(matches!(
                encode_batch(encoding, &b),
                Err(EncodeError::MissingLn1)
            ));
        }
    }

    #[test]
    fn ln1_int8_rows_hold_each_views_values_to_half_a_step_of_their_channel_scale() {
        let b = batch();
        let ln1 = b.ln1.as_ref().unwrap();
        let rows = encode_batch(Encoding::Ln1Int8, &b).unwrap();
        for (view, row) in rows.iter().enumerate() {
            let Targets::Int8 { values, scales } = row else {
                panic!("view {view}: not an int8 row");
            };
            assert_eq!((values.len(), scales.len()), (3 * 4, 4));
            for n in 0..3 {
                for c in 0..4 {
                    let x = ln1[[view, n, c]];
                    // The scale maps the channel's largest magnitude over the tokens to 127.
                    let max = (0..3).map(|t| ln1[[view, t, c]].abs()).fold(0.0, f32::max);
                    let scale = scales[c].to_f32();
                    assert!((scale - max / 127.0).abs() <= 1e-3 * max / 127.0 + 1e-7);
                    let back = f32::from(values[n * 4 + c]) * scale;
                    assert!(
                        (back - x).abs() <= 0.5 * scale + 1e-3 * x.abs(),
                        "{back} vs {x}"
                    );
                }
            }
        }
    }
}
