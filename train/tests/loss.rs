//! The relation loss against an f64 reference of TINYMIM.md's formula, its gradient against
//! the closed form (S − T)/(B·H·N), and its shape errors.

mod common;

use candle_core::{Device, Tensor, Var, D};
use common::{randn, rng};
use tinymim_train::{relation_loss, TrainError};

const SHAPE: [usize; 4] = [2, 3, 5, 5];

/// Teacher maps with exact zeros: softmax rows with about a quarter of the entries zeroed and
/// the rest renormalised.
fn sparse_maps(seed: u64) -> Tensor {
    let mut r = rng(seed);
    let p = candle_nn::ops::softmax(&randn(&SHAPE, &mut r), D::Minus1).unwrap();
    let keep: Vec<f32> = randn(&SHAPE, &mut r)
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, x)| if i % 5 == 0 || *x > -0.6 { 1.0 } else { 0.0 })
        .collect();
    let p = (p * Tensor::from_vec(keep, &SHAPE, &Device::Cpu).unwrap()).unwrap();
    p.broadcast_div(&p.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.reshape(((), SHAPE[3]))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

/// Σ_rows Σ_j T (ln T − ln softmax(S)_j) / rows, with 0·ln 0 = 0, all in f64.
fn kl_reference(logits: &Tensor, target: &Tensor) -> f64 {
    let (s, t) = (rows(logits), rows(target));
    let mut total = 0.0;
    for (s, t) in s.iter().zip(&t) {
        let max = s.iter().cloned().fold(f64::MIN, f64::max);
        let log_z = max + s.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        for (sj, tj) in s.iter().zip(t) {
            if *tj > 0.0 {
                total += tj * (tj.ln() - (sj - log_z));
            }
        }
    }
    total / s.len() as f64
}

#[test]
fn loss_matches_the_f64_formula_with_zero_targets() {
    let mut r = rng(3);
    let s_qk = (randn(&SHAPE, &mut r) * 3.0).unwrap();
    let s_vv = (randn(&SHAPE, &mut r) * 3.0).unwrap();
    let (t_qk, t_vv) = (sparse_maps(4), sparse_maps(5));
    let zeros = t_qk
        .eq(0.0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    assert!(
        zeros.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0,
        "targets hold exact zeros"
    );

    let loss = relation_loss(&s_qk, &s_vv, &t_qk, &t_vv).unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    let want = kl_reference(&s_qk, &t_qk) + kl_reference(&s_vv, &t_vv);
    assert!(got.is_finite());
    assert!(
        (got - want).abs() / want < 1e-6,
        "loss {got} vs reference {want}"
    );
}

#[test]
fn loss_is_zero_when_the_student_matches_the_teacher() {
    let t = sparse_maps(6);
    // Logits whose softmax is T where T > 0 (zeros become very negative logits).
    let logits = t.clamp(1e-30f32, 1.0).unwrap().log().unwrap();
    let loss = relation_loss(&logits, &logits, &t, &t).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-6);
}

#[test]
fn gradient_is_student_minus_teacher_over_rows() {
    let mut r = rng(8);
    let s = Var::from_tensor(&randn(&SHAPE, &mut r)).unwrap();
    let other = randn(&SHAPE, &mut r);
    let t = sparse_maps(9);
    let loss = relation_loss(s.as_tensor(), &other, &t, &sparse_maps(10)).unwrap();
    let grad = loss.backward().unwrap().get(s.as_tensor()).unwrap().clone();
    let n_rows = (SHAPE[0] * SHAPE[1] * SHAPE[2]) as f64;
    let (s_rows, t_rows, g_rows) = (rows(s.as_tensor()), rows(&t), rows(&grad));
    for ((s, t), g) in s_rows.iter().zip(&t_rows).zip(&g_rows) {
        let max = s.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
        for j in 0..s.len() {
            let want = ((s[j] - max).exp() / z - t[j]) / n_rows;
            assert!((g[j] - want).abs() < 1e-7, "grad {} vs {want}", g[j]);
        }
    }
}

#[test]
fn mismatched_shapes_are_named() {
    let mut r = rng(1);
    let s = randn(&SHAPE, &mut r);
    let small = randn(&[2, 3, 4, 4], &mut r);
    let err = relation_loss(&s, &s, &small, &s).unwrap_err();
    assert!(matches!(err, TrainError::Shape { .. }));
    assert!(err.to_string().contains("teacher QK relation map"), "{err}");
    let flat = randn(&[2, 25], &mut r);
    let err = relation_loss(&s, &flat, &s, &s).unwrap_err();
    assert!(
        err.to_string().contains("student VV relation logits"),
        "{err}"
    );
}
