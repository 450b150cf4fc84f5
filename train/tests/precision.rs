//! bfloat16 autocast: products in bf16 agree with float32 ones to bf16 precision, and
//! gradients flow through the casts to float32 parameters.

mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use common::max_rel_err;
use tinymim_train::{relation_loss, Precision, Student, VitConfig};

#[test]
fn bf16_products_and_their_gradients_match_f32_to_bf16_precision() {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 17, 24), &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (24, 9), &dev).unwrap()).unwrap();
    let run = |p: Precision| {
        let y = p.matmul(&a, &b).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.dims(), &[2, 3, 17, 9]);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let ga = grads.get(&a).expect("a gradient for a").clone();
        let gb = grads.get(&b).expect("a gradient for b").clone();
        assert_eq!((ga.dtype(), gb.dtype()), (DType::F32, DType::F32));
        (y, ga, gb)
    };
    let (y32, ga32, gb32) = run(Precision::F32);
    let (y16, ga16, gb16) = run(Precision::Bf16);
    // bf16 keeps 8 significant bits: 24-term dot products land within ~1 %.
    for (what, low, full) in [
        ("y", &y16, &y32),
        ("da", &ga16, &ga32),
        ("db", &gb16, &gb32),
    ] {
        let e = max_rel_err(low, full);
        assert!(e < 2e-2, "{what}: bf16 vs f32 relative error {e}");
        assert!(
            e > 0.0,
            "{what}: bf16 gave f32's exact result, so no cast happened"
        );
    }
}

#[test]
fn the_default_precision_is_f32_on_the_cpu() {
    assert_eq!(Precision::default_for(&Device::Cpu), Precision::F32);
    assert_eq!(Precision::F32.dtype(), DType::F32);
    assert_eq!(Precision::Bf16.dtype(), DType::BF16);
}

/// A small student: D 32, 3 blocks, 4 heads (2 in the adaptive block), N 17.
fn small() -> VitConfig {
    VitConfig {
        dim: 32,
        depth: 3,
        heads: 4,
        mlp_dim: 64,
        patch: 8,
        image_size: 32,
        drop_path: 0.0,
    }
}

/// Pixels and random relation targets `(pixels, R_QK, R_VV)` for [`small`] with 2 heads.
fn inputs() -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let n = small().tokens();
    let target = |sharpness: f64| {
        let logits = (Tensor::randn(0f32, 1.0, (3, 2, n, n), &dev).unwrap() * sharpness).unwrap();
        candle_nn::ops::softmax(&logits, D::Minus1).unwrap()
    };
    let pixels = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &dev).unwrap();
    (pixels, target(1.0), target(2.0))
}

/// Loss and the gradient of every parameter distillation reaches, in `precision`.
fn loss_and_grads(
    precision: Precision,
    (pixels, qk, vv): &(Tensor, Tensor, Tensor),
) -> (f32, Vec<(String, Option<Tensor>)>) {
    let mut student = Student::new(&small(), 2, 5, &Device::Cpu).unwrap();
    student.set_precision(precision);
    assert_eq!(student.precision(), precision);
    let (s_qk, s_vv) = student.relation_logits(pixels, None).unwrap();
    let loss = relation_loss(&s_qk, &s_vv, qk, vv).unwrap();
    let grads = loss.backward().unwrap();
    let per_param = student
        .params()
        .iter()
        .filter(|p| student.receives_distillation_gradient(&p.name))
        .map(|p| (p.name.clone(), grads.get(&p.var).cloned()))
        .collect();
    (loss.to_scalar::<f32>().unwrap(), per_param)
}

/// Cosine similarity of two tensors' values.
fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let dot = (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let norm = |t: &Tensor| {
        (t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64)
            .sqrt()
    };
    dot / (norm(a) * norm(b))
}

#[test]
fn a_bf16_student_step_matches_f32_and_reaches_every_parameter() {
    let inputs = inputs();
    let (loss32, grads32) = loss_and_grads(Precision::F32, &inputs);
    let (loss16, grads16) = loss_and_grads(Precision::Bf16, &inputs);
    let rel = ((loss16 - loss32) / loss32).abs();
    assert!(rel < 1e-2, "loss bf16 {loss16} vs f32 {loss32}");
    assert!(
        rel > 0.0,
        "bf16 gave f32's exact loss, so no product ran in bf16"
    );
    for ((name, g32), (_, g16)) in grads32.iter().zip(&grads16) {
        let g32 = g32
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no f32 gradient"));
        let g16 = g16
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no bf16 gradient"));
        assert_eq!(g16.dtype(), DType::F32, "{name}");
        let c = cosine(g16, g32);
        assert!(c > 0.99, "{name}: bf16 gradient's cosine to f32's is {c}");
    }
}
