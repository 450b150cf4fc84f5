//! The student's construction, presets, init, shapes and refusals, and gradient accumulation.

mod common;

use candle_core::{Device, Tensor};
use common::{randn, rng, teacher_maps};
use tinymim_train::model::{class_and_mean, fused as kernels};
use tinymim_train::{
    AdamW, AdamWConfig, Distiller, LrSchedule, MicroBatch, StepReport, Student, TrainError,
    TrainRng, VitConfig,
};

fn small() -> VitConfig {
    VitConfig {
        dim: 24,
        depth: 2,
        heads: 3,
        mlp_dim: 48,
        patch: 4,
        image_size: 12,
        drop_path: 0.0,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn presets_follow_the_tinymim_table() {
    for (name, dim, heads, mlp) in [
        ("vit-tiny", 192, 3, 768),
        ("vit-small", 384, 6, 1536),
        ("vit-base", 768, 12, 3072),
    ] {
        let c = VitConfig::preset(name).unwrap();
        assert_eq!(
            (c.dim, c.depth, c.heads, c.mlp_dim),
            (dim, 12, heads, mlp),
            "{name}"
        );
        assert_eq!(
            (c.patch, c.image_size, c.tokens()),
            (16, 224, 197),
            "{name}"
        );
        assert_eq!(c.drop_path, 0.1);
    }
    let err = VitConfig::preset("vit-huge").unwrap_err();
    assert!(
        err.to_string().contains("vit-tiny, vit-small, vit-base"),
        "{err}"
    );
}

#[test]
fn malformed_configs_are_refused_naming_the_field() {
    let base = "dim = 24\ndepth = 2\nheads = 3\nmlp_dim = 48\npatch = 4\nimage_size = 12\ndrop_path = 0.0\n";
    assert_eq!(VitConfig::from_toml_str(base, "ok.toml").unwrap(), small());
    for (change, field) in [
        (("heads = 3", "heads = 5"), "heads"),
        (("image_size = 12", "image_size = 13"), "image_size"),
        (("drop_path = 0.0", "drop_path = 1.0"), "drop_path"),
        (("dim = 24", "dim = 0"), "dim"),
        (("dim = 24", "dim = 6"), "dim"),
        (("patch = 4", "patch = 4\nwidth = 3"), "width"),
    ] {
        let text = base.replace(change.0, change.1);
        let err = VitConfig::from_toml_str(&text, "bad.toml").unwrap_err();
        assert!(matches!(err, TrainError::Config { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("bad.toml") && msg.contains(field),
            "{change:?}: {msg}"
        );
    }
}

#[test]
fn the_adaptive_block_needs_a_head_count_dividing_the_width() {
    let err = Student::new(&small(), 5, 0, &Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Config { .. }));
    assert!(
        err.to_string()
            .contains("not divisible by the relation head count 5"),
        "{err}"
    );
    assert!(Student::new(&small(), 0, 0, &Device::Cpu).is_err());

    // Under an 8-head teacher the last block has d = 3 while the others keep 3 heads of 8.
    let student = Student::new(&small(), 8, 0, &Device::Cpu).unwrap();
    let pixels = randn(&[2, 3, 12, 12], &mut rng(1));
    let qkv = student.relation_qkv(&pixels, None).unwrap();
    for t in [&qkv.q, &qkv.k, &qkv.v] {
        assert_eq!(t.dims(), &[2, 8, 10, 3]);
    }
    let (qk, vv) = student.relation_logits(&pixels, None).unwrap();
    assert_eq!(qk.dims(), &[2, 8, 10, 10]);
    assert_eq!(vv.dims(), &[2, 8, 10, 10]);
}

#[test]
fn bad_pixels_are_named() {
    let student = Student::new(&small(), 4, 0, &Device::Cpu).unwrap();
    for shape in [&[2, 3, 16, 16][..], &[2, 1, 12, 12], &[3, 12, 12]] {
        let err = student.embed(&randn(shape, &mut rng(1))).unwrap_err();
        assert!(
            matches!(err, TrainError::Shape { .. }) && err.to_string().contains("pixels"),
            "{err}"
        );
    }
    let f64_pixels = randn(&[1, 3, 12, 12], &mut rng(1))
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let err = student.features(&f64_pixels).unwrap_err();
    assert!(matches!(err, TrainError::DType { .. }), "{err}");
    assert!(
        err.to_string().contains("pixels") && err.to_string().contains("f32"),
        "{err}"
    );
}

#[test]
fn init_follows_tinymim_and_the_seed() {
    let c = VitConfig::preset("vit-small").unwrap();
    let student = Student::new(&c, 6, 42, &Device::Cpu).unwrap();
    let get = |name: &str| {
        let p = student.params().iter().find(|p| p.name == name).unwrap();
        values(p.var.as_tensor())
    };
    let cls = get("cls_token");
    let std = (cls.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / cls.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.003, "class token std {std}");
    // xavier-uniform bounds: qkv as one 3D×D matrix, patch embed on its (D, 3·16·16) view.
    for (name, fan_sum) in [
        ("blocks.0.attn.qkv.weight", 4 * 384),
        ("patch_embed.proj.weight", 384 + 768),
    ] {
        let w = get(name);
        let bound = (6.0 / fan_sum as f64).sqrt() as f32;
        let max = w.iter().fold(0f32, |a, x| a.max(x.abs()));
        assert!(
            max <= bound && max > 0.99 * bound,
            "{name}: max {max}, bound {bound}"
        );
        let mean = w.iter().map(|x| *x as f64).sum::<f64>() / w.len() as f64;
        assert!(mean.abs() < 0.01 * bound as f64, "{name}: mean {mean}");
    }
    assert!(get("blocks.3.mlp.fc1.bias").iter().all(|x| *x == 0.0));
    assert!(get("patch_embed.proj.bias").iter().all(|x| *x == 0.0));
    assert!(get("blocks.3.norm2.weight").iter().all(|x| *x == 1.0));
    assert!(get("norm.bias").iter().all(|x| *x == 0.0));

    let same = Student::new(&small(), 4, 42, &Device::Cpu).unwrap();
    let again = Student::new(&small(), 4, 42, &Device::Cpu).unwrap();
    let other = Student::new(&small(), 4, 43, &Device::Cpu).unwrap();
    let first = |s: &Student| values(s.params()[0].var.as_tensor());
    assert_eq!(first(&same), first(&again));
    assert_ne!(first(&same), first(&other));
}

#[test]
fn features_are_deterministic_class_and_mean_tokens() {
    let student = Student::new(&small(), 4, 0, &Device::Cpu).unwrap();
    let pixels = randn(&[3, 3, 12, 12], &mut rng(2));
    let final_features =
        |p: &Tensor| class_and_mean(&student.features(p).unwrap().final_norm).unwrap();
    let (cls, mean) = final_features(&pixels);
    assert_eq!(cls.dims(), &[3, 24]);
    assert_eq!(mean.dims(), &[3, 24]);
    assert_ne!(values(&cls), values(&mean));
    let (cls2, _) = final_features(&pixels);
    assert_eq!(values(&cls), values(&cls2));
    // The adaptive block's input is the body's output: the last block and the norm follow it.
    let tokens = student.features(&pixels).unwrap();
    assert_eq!(tokens.adaptive_input.dims(), tokens.final_norm.dims());
    assert_ne!(values(&tokens.adaptive_input), values(&tokens.final_norm));
    // Each image's features depend on that image only.
    let (one, _) = final_features(&pixels.narrow(0, 1, 1).unwrap());
    let diff = (one - cls.narrow(0, 1, 1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
}

fn distiller() -> Distiller {
    distiller_of(&small())
}

fn distiller_of(config: &VitConfig) -> Distiller {
    let student = Student::new(config, 4, 3, &Device::Cpu).unwrap();
    let optimizer = AdamW::new(student.params(), AdamWConfig::default());
    Distiller {
        student,
        optimizer,
        schedule: LrSchedule::scaled(1e-2, 256, 0.0, 10.0, 1),
        rng: TrainRng::from_seed(0),
        step: 0,
        clip_grad: None,
    }
}

/// `d` made to update like plain SGD. eps = 1 makes AdamW's first step close to SGD, so the
/// updates show the gradients themselves (Adam's sign-like first step would hide a wrong scale,
/// and turn a gradient within rounding of zero into a whole step either way). A learning rate
/// of 1 makes them ~1e-2: the updates are read back as differences of f32 weights of up to
/// 0.35, whose resolution (3e-8) must stay far below the tolerance times the update.
fn sgd_like(mut d: Distiller) -> Distiller {
    d.schedule = LrSchedule::scaled(1.0, 256, 0.0, 10.0, 1);
    d.optimizer = AdamW::new(
        d.student.params(),
        AdamWConfig {
            eps: 1.0,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    );
    d
}

/// The weights of `d`'s student, copied.
fn weights(d: &Distiller) -> Vec<Tensor> {
    d.student
        .params()
        .iter()
        .map(|p| p.var.as_tensor().copy().unwrap())
        .collect()
}

/// Asserts that two steps from the same `initial` weights reported the same loss, gradient
/// norm and learning rate and made the same update to every weight (relative to the update's
/// largest value), and that weights outside the distillation graph did not move.
fn assert_same_step(
    (a, first): (&StepReport, &Distiller),
    (b, second): (&StepReport, &Distiller),
    initial: &[Tensor],
    tolerance: f64,
) {
    assert!(
        (a.loss - b.loss).abs() / a.loss < tolerance,
        "loss {} vs {}",
        a.loss,
        b.loss
    );
    assert!(
        (a.grad_norm - b.grad_norm).abs() / a.grad_norm < tolerance,
        "gradient norm {} vs {}",
        a.grad_norm,
        b.grad_norm
    );
    assert_eq!(a.lr, b.lr);
    let params = first
        .student
        .params()
        .iter()
        .zip(second.student.params())
        .zip(initial);
    for ((p, q), w0) in params {
        let da = (p.var.as_tensor() - w0).unwrap();
        let db = (q.var.as_tensor() - w0).unwrap();
        if !first.student.receives_distillation_gradient(&p.name) {
            assert_eq!(
                values(&da),
                values(&da.zeros_like().unwrap()),
                "{} moved",
                p.name
            );
            continue;
        }
        let err = common::max_rel_err(&db, &da);
        assert!(err < tolerance, "{}: update relative error {err:e}", p.name);
    }
}

#[test]
fn accumulating_two_halves_equals_one_batch() {
    let mut r = rng(4);
    let pixels = randn(&[2, 3, 12, 12], &mut r);
    let qk = teacher_maps(&[2, 4, 10, 10], &mut r);
    let vv = teacher_maps(&[2, 4, 10, 10], &mut r);
    let half = |t: &Tensor, i| t.narrow(0, i, 1).unwrap();
    let halves: Vec<[Tensor; 3]> = (0..2)
        .map(|i| [half(&pixels, i), half(&qk, i), half(&vv, i)])
        .collect();

    let initial = weights(&distiller());
    let mut whole = sgd_like(distiller());
    let a = whole
        .step(&[MicroBatch {
            pixels: &pixels,
            target_qk: &qk,
            target_vv: &vv,
        }])
        .unwrap();
    let mut split = sgd_like(distiller());
    let micro: Vec<MicroBatch> = halves
        .iter()
        .map(|[p, q, v]| MicroBatch {
            pixels: p,
            target_qk: q,
            target_vv: v,
        })
        .collect();
    let b = split.step(&micro).unwrap();
    assert_same_step((&a, &whole), (&b, &split), &initial, 1e-5);
}

/// The fast path is the default path: a whole step (forward, relation loss, backward,
/// gradient norm, AdamW) through the fused CPU kernels equals the same step through candle's
/// composite ops within float32 rounding, drop path included.
#[test]
fn a_step_through_the_fused_kernels_equals_the_composite_step() {
    let config = VitConfig {
        drop_path: 0.2,
        ..small()
    };
    let mut r = rng(9);
    let pixels = randn(&[3, 3, 12, 12], &mut r);
    let qk = teacher_maps(&[3, 4, 10, 10], &mut r);
    let vv = teacher_maps(&[3, 4, 10, 10], &mut r);
    let batch = [MicroBatch {
        pixels: &pixels,
        target_qk: &qk,
        target_vv: &vv,
    }];
    let initial = weights(&distiller_of(&config));
    assert!(
        kernels::kernels_supported(),
        "this CPU lacks AVX2/FMA: the fused kernels cannot run here, so this cannot be checked"
    );
    let runs = kernels::kernel_runs();
    let mut fused = sgd_like(distiller_of(&config));
    let a = fused.step(&batch).unwrap();
    // Forward, backward and AdamW each launch kernels: dozens in all, not a stray one.
    let fused_runs = kernels::kernel_runs() - runs;
    assert!(fused_runs > 20, "the fused step ran {fused_runs} kernels");
    let mut composite = sgd_like(distiller_of(&config));
    let b = kernels::composite_only(|| composite.step(&batch)).unwrap();
    assert_eq!(
        kernels::kernel_runs() - runs,
        fused_runs,
        "the composite step ran no fused kernel"
    );
    assert_same_step((&a, &fused), (&b, &composite), &initial, 1e-4);
}

#[test]
fn a_step_without_micro_batches_is_refused() {
    let mut d = distiller();
    assert!(matches!(d.step(&[]), Err(TrainError::EmptyStep)));
    assert_eq!(d.step, 0, "a refused step does not advance the schedule");
}

#[test]
fn distillation_lowers_the_loss_on_a_fixed_batch() {
    let mut r = rng(6);
    let pixels = randn(&[4, 3, 12, 12], &mut r);
    let qk = teacher_maps(&[4, 4, 10, 10], &mut r);
    let vv = teacher_maps(&[4, 4, 10, 10], &mut r);
    let mut d = distiller();
    d.schedule = LrSchedule::scaled(1e-2, 256, 0.0, 1e9, 1);
    let batch = [MicroBatch {
        pixels: &pixels,
        target_qk: &qk,
        target_vv: &vv,
    }];
    let first = d.step(&batch).unwrap().loss;
    let mut last = first;
    for _ in 0..30 {
        last = d.step(&batch).unwrap().loss;
    }
    assert!(last < 0.7 * first, "loss {first} → {last}");
}
