//! The reference every fused kernel is tested against: the same public function on f64
//! input, which takes candle's composite path (a float64 reference), forward and gradient.
//! Inputs include non-contiguous views and rows of large logits (±1e4) for stability.
//!
//! Relative error is measured per tensor as max|fused − reference| / max|reference|.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use crate::pool::{kernel_runs, kernels_supported};

pub(super) use crate::testing::{max_rel_err, randn, rng};

pub(super) const TOLERANCE: f64 = 1e-5;

pub(super) type Op<'a> = &'a dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// The output of `f` on `inputs` (any one dtype) and the gradients of every input: the
/// gradient of Σ f(inputs)·w for a fixed random `w`, so that every output element matters.
/// With `transpose`, `f` sees the non-contiguous transpose of the last two axes of the first
/// input.
pub(super) fn run(f: Op, inputs: &[Tensor], w: &Tensor, transpose: bool) -> (Tensor, Vec<Tensor>) {
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
pub(super) fn check_all(what: &str, f: Op, inputs: &[Tensor], transpose: bool) {
    let mut args = inputs.to_vec();
    if transpose {
        args[0] = args[0].t().unwrap();
    }
    let out_shape = f(&args).unwrap().dims().to_vec();
    // A seed no input uses: w ∝ x would make LayerNorm's gradient vanish.
    let w = randn(&out_shape, &mut rng(1000));
    assert!(
        kernels_supported(),
        "this CPU lacks AVX2/FMA: the fused kernels cannot run here, so {what} cannot be checked"
    );
    let runs = kernel_runs();
    let (y32, g32) = run(f, inputs, &w, transpose);
    assert!(
        kernel_runs() > runs,
        "{what}: the f32 run took the composite path, not the fused kernels"
    );
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
pub(super) fn check(
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
pub(super) fn large(shape: &[usize], seed: u64) -> Tensor {
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

pub(super) fn normal(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    (randn(shape, &mut rng(seed)) * scale).unwrap()
}
