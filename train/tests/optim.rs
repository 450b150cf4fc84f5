//! AdamW against an f64 reference of the update rule, and TinyMIM's weight-decay groups.

use candle_core::{Device, Tensor, Var};
use tinymim_train::{AdamW, AdamWConfig, Gradients, Moments, Param, TrainError};

fn param(name: &str, values: &[f32], shape: &[usize]) -> Param {
    let t = Tensor::from_slice(values, shape, &Device::Cpu).unwrap();
    Param {
        name: name.to_string(),
        var: Var::from_tensor(&t).unwrap(),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Gradients equal to `wanted[i]` for `params[i]`, by backpropagating Σ p·c.
fn gradients(params: &[Param], wanted: &[Vec<f32>]) -> Gradients {
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (p, g) in params.iter().zip(wanted) {
        let c = Tensor::from_slice(g, p.var.dims(), &Device::Cpu).unwrap();
        loss = (loss + (p.var.as_tensor() * c).unwrap().sum_all().unwrap()).unwrap();
    }
    Gradients::collect(params, &loss.backward().unwrap())
}

/// PyTorch's documented AdamW step in f64 for one parameter.
struct Reference {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Reference {
    fn step(&mut self, g: &[f32], lr: f64, wd: f64, c: &AdamWConfig) {
        self.t += 1;
        for i in 0..self.p.len() {
            let g = g[i] as f64;
            self.p[i] -= lr * wd * self.p[i];
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
            let m_hat = self.m[i] / (1.0 - c.beta1.powi(self.t));
            let v_hat = self.v[i] / (1.0 - c.beta2.powi(self.t));
            self.p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }
}

#[test]
fn three_steps_match_the_f64_update_rule_with_decay_groups() {
    let config = AdamWConfig::default();
    let init = [
        ("cls_token", vec![0.3f32, -0.7, 1.2, 0.05], vec![1, 1, 4]),
        (
            "blocks.0.attn.qkv.weight",
            vec![0.5, -0.25, 2.0, -1.5, 0.75, 0.1],
            vec![3, 2],
        ),
        ("blocks.0.attn.qkv.bias", vec![0.9, -0.4, 0.2], vec![3]),
        ("blocks.0.norm1.weight", vec![1.1, 0.8], vec![2]),
    ];
    let params: Vec<Param> = init.iter().map(|(n, v, s)| param(n, v, s)).collect();
    let mut refs: Vec<Reference> = init
        .iter()
        .map(|(_, v, _)| Reference {
            p: v.iter().map(|&x| x as f64).collect(),
            m: vec![0.0; v.len()],
            v: vec![0.0; v.len()],
            t: 0,
        })
        .collect();
    let mut opt = AdamW::new(&params, config.clone());
    let steps: [(f64, [f32; 3]); 3] = [
        (1e-2, [0.5, -2.0, 0.0]),
        (3e-2, [-1.0, 0.25, 3.0]),
        (5e-3, [0.1, 0.1, -0.3]),
    ];
    for (lr, pattern) in steps {
        let grads: Vec<Vec<f32>> = init
            .iter()
            .map(|(_, v, _)| {
                (0..v.len())
                    .map(|i| pattern[i % 3] * (1.0 + i as f32))
                    .collect()
            })
            .collect();
        opt.step(&gradients(&params, &grads), lr).unwrap();
        for (((_, _, shape), r), g) in init.iter().zip(&mut refs).zip(&grads) {
            let wd = if shape.len() > 1 {
                config.weight_decay
            } else {
                0.0
            };
            r.step(g, lr, wd, &config);
        }
    }
    for ((p, r), (name, ..)) in params.iter().zip(&refs).zip(&init) {
        let got = values(p.var.as_tensor());
        let scale = r.p.iter().fold(0f64, |a, x| a.max(x.abs()));
        for (g, want) in got.iter().zip(&r.p) {
            assert!(
                (*g as f64 - want).abs() / scale < 1e-6,
                "{name}: {g} vs reference {want}"
            );
        }
        assert_eq!(opt.state()[p.name.as_str()].step, 3);
    }
}

#[test]
fn weight_decay_groups_follow_tinymim() {
    assert!(
        AdamW::decays("cls_token", &[1, 1, 192]),
        "the class token is decayed"
    );
    assert!(AdamW::decays("patch_embed.proj.weight", &[192, 3, 16, 16]));
    assert!(AdamW::decays("blocks.3.mlp.fc1.weight", &[768, 192]));
    assert!(!AdamW::decays("blocks.3.mlp.fc1.bias", &[768]));
    assert!(
        !AdamW::decays("blocks.3.norm1.weight", &[192]),
        "1-D parameters are not"
    );
    assert!(!AdamW::decays("norm.bias", &[192]));
}

#[test]
fn decay_alone_shrinks_decayed_weights_only() {
    // With a zero gradient Adam's step is 0/(0 + eps) = 0, leaving the decoupled decay.
    let params = vec![
        param("w", &[2.0, -4.0], &[1, 2]),
        param("b", &[2.0, -4.0], &[2]),
    ];
    let mut opt = AdamW::new(&params, AdamWConfig::default());
    opt.step(&gradients(&params, &[vec![0.0, 0.0], vec![0.0, 0.0]]), 0.1)
        .unwrap();
    let f = 1.0 - 0.1 * 0.05;
    assert_eq!(
        values(params[0].var.as_tensor()),
        vec![2.0 * f as f32, -4.0 * f as f32]
    );
    assert_eq!(values(params[1].var.as_tensor()), vec![2.0, -4.0]);
}

#[test]
fn parameters_without_a_gradient_are_untouched() {
    let params = vec![
        param("a.weight", &[1.0, 2.0], &[1, 2]),
        param("frozen.weight", &[3.0, 4.0], &[1, 2]),
    ];
    let mut opt = AdamW::new(&params, AdamWConfig::default());
    let grads = gradients(&params[..1], &[vec![1.0, -1.0]]);
    opt.step(&grads, 0.1).unwrap();
    assert_eq!(values(params[1].var.as_tensor()), vec![3.0, 4.0]);
    assert!(
        !opt.state().contains_key("frozen.weight"),
        "no moments without a gradient"
    );
    assert_ne!(values(params[0].var.as_tensor()), vec![1.0, 2.0]);
}

#[test]
fn restored_moments_must_match_their_parameters() {
    let params = vec![param("w", &[1.0, 2.0], &[1, 2])];
    let wrong = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let state = [(
        "w".to_string(),
        Moments {
            m: wrong.clone(),
            v: wrong,
            step: 1,
        },
    )]
    .into();
    let err =
        AdamW::with_state(&params, AdamWConfig::default(), state, "ckpt.safetensors").unwrap_err();
    assert!(matches!(err, TrainError::Shape { .. }), "{err}");
    assert!(
        err.to_string().contains("ckpt.safetensors") && err.to_string().contains("`w`"),
        "{err}"
    );

    let z = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let state = [(
        "ghost".to_string(),
        Moments {
            m: z.clone(),
            v: z,
            step: 1,
        },
    )]
    .into();
    let err = AdamW::with_state(&params, AdamWConfig::default(), state, "ckpt").unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
}

/// The in-place path (f32 on the CPU, many parallel chunks) against the composite path (the
/// same values in f64, which the in-place path does not take) and the f64 update rule, over
/// three steps with decay; moments included.
#[test]
fn in_place_update_matches_the_composite_path_on_a_large_parameter() {
    let len = 3 * (1 << 14) + 123;
    let config = AdamWConfig::default();
    let wave = |seed: f32| -> Vec<f32> {
        (0..len)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 1.7)
            .collect()
    };
    let init = wave(0.5);
    let shape = [len / 3, 3];
    let f32_param = param("blocks.0.mlp.fc1.weight", &init, &shape);
    let f64_param = Param {
        name: f32_param.name.clone(),
        var: Var::from_tensor(&f32_param.var.to_dtype(candle_core::DType::F64).unwrap()).unwrap(),
    };
    let mut reference = Reference {
        p: init.iter().map(|&x| x as f64).collect(),
        m: vec![0.0; len],
        v: vec![0.0; len],
        t: 0,
    };
    let (mut fast, mut composite) = (
        AdamW::new(std::slice::from_ref(&f32_param), config.clone()),
        AdamW::new(std::slice::from_ref(&f64_param), config.clone()),
    );
    for (step, lr) in [1e-2, 3e-2, 5e-3].into_iter().enumerate() {
        let g = wave(2.0 + step as f32);
        fast.step(
            &gradients(std::slice::from_ref(&f32_param), std::slice::from_ref(&g)),
            lr,
        )
        .unwrap();
        let g64 = Tensor::from_slice(&g, &shape, &Device::Cpu)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        let loss = (f64_param.var.as_tensor() * g64)
            .unwrap()
            .sum_all()
            .unwrap();
        composite
            .step(
                &Gradients::collect(std::slice::from_ref(&f64_param), &loss.backward().unwrap()),
                lr,
            )
            .unwrap();
        reference.step(&g, lr, config.weight_decay, &config);
    }
    let as_f64 = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (fast_state, composite_state) = (
        &fast.state()[f32_param.name.as_str()],
        &composite.state()[f32_param.name.as_str()],
    );
    for (what, got, composite, reference) in [
        (
            "parameter",
            as_f64(f32_param.var.as_tensor()),
            as_f64(f64_param.var.as_tensor()),
            &reference.p,
        ),
        (
            "first moment",
            as_f64(&fast_state.m),
            as_f64(&composite_state.m),
            &reference.m,
        ),
        (
            "second moment",
            as_f64(&fast_state.v),
            as_f64(&composite_state.v),
            &reference.v,
        ),
    ] {
        let scale = reference.iter().fold(0f64, |a, x| a.max(x.abs()));
        for (i, ((g, c), r)) in got.iter().zip(&composite).zip(reference).enumerate() {
            assert!(
                (g - c).abs() / scale < 1e-6 && (c - r).abs() / scale < 1e-12,
                "{what} {i}: in place {g}, composite {c}, reference {r}"
            );
        }
    }
    assert_eq!(fast_state.step, 3);
}
