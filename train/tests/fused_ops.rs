//! The fused CPU kernels of `model::fused` against the composite candle path, forward and
//! gradient. The fused path runs for f32 on the CPU; the same function on f64 input takes the
//! composite path, which here serves as a float64 reference. Inputs include non-contiguous
//! views and rows of large logits (±1e4) for stability.
//!
//! Relative error is measured per tensor as max|fused − reference| / max|reference|.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{max_rel_err, randn, rng};
use rand::Rng;
use tinymim_train::model::fused;

const TOLERANCE: f64 = 1e-5;

type Op<'a> = &'a dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// The output of `f` on `inputs` (any one dtype) and the gradients of every input: the
/// gradient of Σ f(inputs)·w for a fixed random `w`, so that every output element matters.
/// With `transpose`, `f` sees the non-contiguous transpose of the last two axes of the first
/// input.
fn run(f: Op, inputs: &[Tensor], w: &Tensor, transpose: bool) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|x| Var::from_tensor(x).unwrap())
        .collect();
    let mut args: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    if transpose {
        args[0] = args[0].t().unwrap();
        assert!(!args[0].is_contiguous());
    }
    let y = f(&args).unwrap();
    let loss = (&y * w.to_dtype(y.dtype()).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| grads.get(v).expect("every input gets a gradient").clone())
        .collect();
    (y, grads)
}

/// Checks the fused (f32) output and input gradients of `f` against the f64 composite path.
fn check_all(what: &str, f: Op, inputs: &[Tensor], transpose: bool) {
    let mut args = inputs.to_vec();
    if transpose {
        args[0] = args[0].t().unwrap();
    }
    let out_shape = f(&args).unwrap().dims().to_vec();
    // A seed no input uses: w ∝ x would make LayerNorm's gradient vanish.
    let w = randn(&out_shape, &mut rng(1000));
    let (y32, g32) = run(f, inputs, &w, transpose);
    let inputs64: Vec<Tensor> = inputs
        .iter()
        .map(|x| x.to_dtype(DType::F64).unwrap())
        .collect();
    let (y64, g64) = run(f, &inputs64, &w, transpose);
    assert_eq!(y32.dtype(), DType::F32);
    let mut pairs = vec![("output".to_string(), &y32, &y64)];
    for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
        pairs.push((format!("gradient of input {i}"), a, b));
    }
    for (part, a, b) in pairs {
        let values: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{what}: non-finite {part}"
        );
        let err = max_rel_err(a, &b.to_dtype(DType::F32).unwrap());
        assert!(err < TOLERANCE, "{what}: {part} relative error {err:e}");
    }
    for (i, g) in g32.iter().enumerate() {
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            g.iter().any(|&v| v != 0.0),
            "{what}: the gradient of input {i} is not all zero"
        );
    }
}

/// [`check_all`] for an op of one input.
fn check(
    what: &str,
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Tensor,
    transpose: bool,
) {
    check_all(
        what,
        &|args: &[Tensor]| f(&args[0]),
        std::slice::from_ref(x),
        transpose,
    );
}

/// Rows of large values: each row an offset uniform in (−1e4, 1e4) plus a spread of a few
/// units, so that naive exponentials overflow but the gradients are not all zero.
fn large(shape: &[usize], seed: u64) -> Tensor {
    let mut r = rng(seed);
    let d = *shape.last().unwrap();
    let n: usize = shape.iter().product();
    let mut values = Vec::with_capacity(n);
    for _ in 0..n / d {
        let offset = r.random_range(-1e4f32..1e4);
        values.extend((0..d).map(|_| offset + r.random_range(-4f32..4.0)));
    }
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn normal(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    (randn(shape, &mut rng(seed)) * scale).unwrap()
}

#[test]
fn softmax_matches_composite() {
    let f = |x: &Tensor| fused::softmax_last_dim(x, 0.125);
    check("softmax", &f, &normal(&[2, 3, 17, 17], 1, 4.0), false);
    check(
        "softmax (transposed)",
        &f,
        &normal(&[2, 3, 17, 17], 2, 4.0),
        true,
    );
    let f = |x: &Tensor| fused::softmax_last_dim(x, 1.0);
    check("softmax (large logits)", &f, &large(&[4, 9, 33], 3), false);
}

#[test]
fn attention_matches_composite() {
    // The qkv projection of 2 samples, 3 heads of d = 16 (D = 48), N = 17 tokens, laid out as
    // timm's: [B, N, 3·D].
    let f = |x: &Tensor| fused::attention(x, 3, 0.25);
    check("attention", &f, &normal(&[2, 17, 144], 50, 1.0), false);
    check(
        "attention (transposed)",
        &f,
        &normal(&[2, 144, 17], 51, 1.0),
        true,
    );
    // Peaked heads: logits of tens, far from uniform probabilities.
    let f = |x: &Tensor| fused::attention(x, 2, 0.25);
    check(
        "attention (peaked)",
        &f,
        &normal(&[1, 9, 48], 52, 4.0),
        false,
    );
}

#[test]
fn scaled_products_match_composite() {
    let f = |args: &[Tensor]| fused::scaled_products_nt(&args[0], &args[1], 0.25);
    // q·kᵀ of 2 samples × 3 heads, N = 17, d = 16; an uneven M, N and K too.
    let (a, b) = (
        normal(&[2, 3, 17, 16], 60, 1.0),
        normal(&[2, 3, 17, 16], 61, 1.0),
    );
    check_all("products", &f, &[a, b], false);
    let (a, b) = (normal(&[4, 5, 3], 62, 1.0), normal(&[4, 7, 3], 63, 1.0));
    check_all("products (M ≠ N)", &f, &[a, b], false);
    let (a, b) = (
        normal(&[2, 3, 16, 17], 64, 1.0),
        normal(&[2, 3, 17, 16], 65, 1.0),
    );
    check_all("products (transposed)", &f, &[a, b], true);
    // One large product (a linear layer's x·Wᵀ), its rows cut into blocks across tasks, and
    // its weight gradient (33 rows) too.
    let (x, w) = (normal(&[70, 24], 67, 1.0), normal(&[33, 24], 68, 1.0));
    check_all("products (one matrix, x·Wᵀ)", &f, &[x, w], false);
    // v·vᵀ: one tensor on both sides, whose gradient gathers both.
    let f = |x: &Tensor| fused::scaled_products_nt(x, x, 0.25);
    check(
        "products (v·vᵀ)",
        &f,
        &normal(&[2, 3, 17, 16], 66, 1.0),
        false,
    );
}

#[test]
fn log_softmax_matches_composite() {
    let f = |x: &Tensor| fused::log_softmax_last_dim(x);
    check("log_softmax", &f, &normal(&[2, 3, 17, 17], 4, 4.0), false);
    check(
        "log_softmax (transposed)",
        &f,
        &normal(&[3, 5, 21], 5, 4.0),
        true,
    );
    check(
        "log_softmax (large logits)",
        &f,
        &large(&[4, 9, 33], 6),
        false,
    );
}

#[test]
fn layer_norm_matches_composite() {
    let eps = tinymim_train::model::LAYER_NORM_EPS;
    let f = |args: &[Tensor]| fused::layer_norm(&args[0], &args[1], &args[2], eps);
    let params = |d: usize, seed: u64| {
        let w = (normal(&[d], seed, 0.5) + 1.0).unwrap();
        [w, normal(&[d], seed + 1, 0.5)]
    };
    // An offset mean, as in real activations.
    let x = (normal(&[2, 7, 48], 7, 3.0) + 5.0).unwrap();
    let [w, b] = params(48, 30);
    check_all("layer norm", &f, &[x, w, b], false);
    let [w, b] = params(48, 32);
    let x = normal(&[2, 48, 7], 8, 3.0);
    check_all("layer norm (transposed)", &f, &[x, w, b], true);
    // Large values (a large common offset loses the spread to f32 rounding in any order of
    // summation, so the composite f32 path is no better there). 150 rows: several partial
    // sums of the parameter gradients.
    let [w, b] = params(64, 34);
    let x = normal(&[2, 75, 64], 9, 1e4);
    check_all("layer norm (large)", &f, &[x, w, b], false);
}

#[test]
fn add_bias_matches_composite() {
    let f = |args: &[Tensor]| fused::add_bias(&args[0], &args[1]);
    let x = normal(&[3, 70, 24], 40, 2.0);
    check_all("bias", &f, &[x, normal(&[24], 41, 1.0)], false);
    let x = normal(&[3, 24, 70], 42, 2.0);
    check_all("bias (transposed)", &f, &[x, normal(&[24], 43, 1.0)], true);
}

#[test]
fn linear_matches_composite() {
    // x·Wᵀ + b: rows cut into blocks across tasks, the bias the start of every output row.
    let f = |args: &[Tensor]| fused::linear(&args[0], &args[1], &args[2]);
    let (x, w, b) = (
        normal(&[70, 24], 44, 1.0),
        normal(&[33, 24], 45, 1.0),
        normal(&[33], 46, 1.0),
    );
    check_all("linear", &f, &[x, w, b], false);
    let x = normal(&[24, 70], 47, 1.0);
    let (w, b) = (normal(&[33, 24], 48, 1.0), normal(&[33], 49, 1.0));
    check_all("linear (transposed x)", &f, &[x, w, b], true);
}

#[test]
fn linear_of_a_constant_input_gives_only_the_parameters_gradients() {
    // The patch embedding's case: pixels are no variable, so the fused op computes no gradient
    // for them (candle's composite path, the f64 reference here, does).
    let x = normal(&[70, 24], 55, 1.0);
    let grads_of = |x: &Tensor, dtype| {
        let w = Var::from_tensor(&normal(&[33, 24], 56, 1.0).to_dtype(dtype).unwrap()).unwrap();
        let b = Var::from_tensor(&normal(&[33], 57, 1.0).to_dtype(dtype).unwrap()).unwrap();
        let x = x.to_dtype(dtype).unwrap();
        let y = fused::linear(&x, w.as_tensor(), b.as_tensor()).unwrap();
        let loss = (&y * randn(&[70, 33], &mut rng(58)).to_dtype(dtype).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        if dtype == DType::F32 {
            assert!(grads.get(&x).is_none(), "a constant input gets no gradient");
        }
        [w.as_tensor(), b.as_tensor()].map(|p| grads.get(p).unwrap().to_dtype(DType::F32).unwrap())
    };
    let (fused_grads, reference) = (grads_of(&x, DType::F32), grads_of(&x, DType::F64));
    for (g, r) in fused_grads.iter().zip(&reference) {
        let err = max_rel_err(g, r);
        assert!(err < TOLERANCE, "parameter gradient relative error {err:e}");
    }
}

#[test]
fn gelu_matches_composite() {
    let f = |x: &Tensor| fused::gelu_erf(x);
    // More values than one task of the elementwise kernel, and not a multiple of it.
    check("gelu", &f, &normal(&[3, 71, 300], 10, 3.0), false);
    check(
        "gelu (transposed)",
        &f,
        &normal(&[2, 30, 11], 11, 3.0),
        true,
    );
    check("gelu (large)", &f, &large(&[4, 9, 33], 12), false);
    // Zero, tiny and subnormal values, where the backward cannot take Φ(x) as y / x.
    let special = [
        0.0f32, -0.0, 1e-38, -1e-40, 1e-20, -1e-10, 3e-7, -8.0, -13.0, -20.0,
    ];
    let x = Tensor::cat(
        &[
            Tensor::new(&special, &Device::Cpu).unwrap(),
            normal(&[10], 13, 1.0),
        ],
        0,
    )
    .unwrap();
    check("gelu (special values)", &f, &x, false);
}

#[test]
fn add_scaled_samples_matches_composite() {
    let factors = [0.0f32, 1.25, 1.25, 0.0, 1.25];
    let f = move |args: &[Tensor]| fused::add_scaled_samples(&args[0], &args[1], &factors);
    // More values than one task of the elementwise kernel, samples not aligned to it.
    let (x, y) = (
        normal(&[5, 197, 19], 50, 1.0),
        normal(&[5, 197, 19], 53, 1.0),
    );
    check_all("add scaled samples", &f, &[x, y], false);
    let (x, y) = (normal(&[5, 19, 7], 51, 1.0), normal(&[5, 7, 19], 54, 1.0));
    check_all("add scaled samples (transposed)", &f, &[x, y], true);
    let x = normal(&[4, 3], 52, 1.0);
    assert!(fused::add_scaled_samples(&x, &x, &factors).is_err());
}

/// Target distributions with exact zeros: every row has some, some rows are one-hot.
fn sparse_targets(shape: &[usize], seed: u64) -> Tensor {
    let mut r = rng(seed);
    let d = *shape.last().unwrap();
    let rows: usize = shape.iter().product::<usize>() / d;
    let mut values = Vec::with_capacity(rows * d);
    for row in 0..rows {
        let mut p: Vec<f32> = (0..d)
            .map(|j| {
                let zero = if row % 3 == 0 {
                    j != row % d
                } else {
                    j % 4 == 1
                };
                if zero {
                    0.0
                } else {
                    r.random_range(0.01f32..1.0)
                }
            })
            .collect();
        let sum: f32 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= sum);
        values.extend(p);
    }
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn kl_rows_matches_composite() {
    let shape = [2, 3, 13, 13];
    let dense = candle_nn::ops::softmax_last_dim(&normal(&shape, 13, 2.0)).unwrap();
    for (what, target, logits, transpose) in [
        ("kl", dense.clone(), normal(&shape, 14, 3.0), false),
        (
            "kl (transposed)",
            dense.clone(),
            normal(&shape, 15, 3.0),
            true,
        ),
        // Rows whose mass is not 1 exercise the Σ T factor of the backward.
        (
            "kl (rows of mass 0.5)",
            (dense * 0.5).unwrap(),
            normal(&shape, 22, 3.0),
            false,
        ),
        (
            "kl (zeros)",
            sparse_targets(&shape, 16),
            normal(&shape, 17, 3.0),
            false,
        ),
        (
            "kl (large logits)",
            sparse_targets(&shape, 18),
            large(&shape, 19),
            false,
        ),
    ] {
        let f = move |s: &Tensor| {
            let t = target.to_dtype(s.dtype())?;
            fused::kl_rows(s, &t)
        };
        check(what, &f, &logits, transpose);
    }
}

#[test]
fn kl_rows_of_a_distribution_against_itself_is_zero_even_with_zeros() {
    let t = sparse_targets(&[2, 5, 9], 20);
    let logits = t.clamp(1e-30, 1.0).unwrap().log().unwrap();
    let logits = t
        .gt(0.0)
        .unwrap()
        .where_cond(&logits, &(t.zeros_like().unwrap() - 1e4).unwrap());
    let kl: Vec<f32> = fused::kl_rows(&logits.unwrap(), &t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(kl.iter().all(|v| v.abs() < 1e-5), "{kl:?}");
}

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
