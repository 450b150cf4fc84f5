//! The student's forward pass, relation loss and parameter gradients against PyTorch + timm
//! (fixture made by `fixtures/make_grad_fixture.py`), plus gradient coverage and the position
//! embedding against an f64 reference.
//!
//! Relative error is measured per tensor as max|candle − torch| / max|torch|.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::{max_rel_err, randn, rng, teacher_maps};
use tinymim_train::model::sincos_pos_embed;
use tinymim_train::{relation_loss, Gradients, Student, VitConfig};

const TOLERANCE: f64 = 1e-5;

struct Fixture {
    config: VitConfig,
    relation_heads: usize,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/grad_fixture.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let json = &header.metadata().as_ref().unwrap()["config"];
        let mut config: serde_json::Value = serde_json::from_str(json).unwrap();
        let relation_heads = config
            .as_object_mut()
            .unwrap()
            .remove("relation_heads")
            .unwrap()
            .as_u64()
            .unwrap() as usize;
        Fixture {
            config: serde_json::from_value(config).unwrap(),
            relation_heads,
            tensors: candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap(),
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
    }

    /// The tensors under `prefix.`, with the prefix stripped.
    fn group(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
            .collect()
    }

    fn student(&self) -> Student {
        let student = Student::new(&self.config, self.relation_heads, 0, &Device::Cpu).unwrap();
        student
            .load_weights(&self.group("weights."), "grad_fixture")
            .unwrap();
        student
    }
}

#[test]
fn forward_loss_and_gradients_match_pytorch() {
    let fx = Fixture::load();
    let student = fx.student();
    assert!(
        max_rel_err(student.pos_embed(), fx.get("weights.pos_embed")) < 1e-7,
        "our sin-cos table equals MAE's numpy one"
    );

    let (qk, vv) = student
        .relation_logits(fx.get("input.pixels"), None)
        .unwrap();
    assert!(
        max_rel_err(&qk, fx.get("output.qk")) < TOLERANCE,
        "QK logits"
    );
    assert!(
        max_rel_err(&vv, fx.get("output.vv")) < TOLERANCE,
        "VV logits"
    );

    let loss = relation_loss(&qk, &vv, fx.get("target.qk"), fx.get("target.vv")).unwrap();
    let loss_err = max_rel_err(&loss.reshape(1).unwrap(), fx.get("loss"));
    assert!(loss_err < TOLERANCE, "loss relative error {loss_err:e}");

    let grads = Gradients::collect(student.params(), &loss.backward().unwrap());
    let reference = fx.group("grad.");
    let mut worst = (0.0, String::new());
    for p in student.params() {
        match (grads.get(&p.name), reference.get(&p.name)) {
            (Some(g), Some(r)) => {
                let err = max_rel_err(g, r);
                assert!(err < TOLERANCE, "{}: relative error {err:e}", p.name);
                if err > worst.0 {
                    worst = (err, p.name.clone());
                }
            }
            (None, None) => assert!(
                !student.receives_distillation_gradient(&p.name),
                "{} gets no gradient in either framework but should",
                p.name
            ),
            (ours, theirs) => panic!(
                "{}: gradient in candle: {}, in torch: {}",
                p.name,
                ours.is_some(),
                theirs.is_some()
            ),
        }
    }
    assert_eq!(
        reference.len(),
        grads.iter().count(),
        "same set of parameters get gradients"
    );
    eprintln!("worst gradient relative error {:e} ({})", worst.0, worst.1);
}

#[test]
fn every_distilled_parameter_of_vit_tiny_gets_a_nonzero_gradient() {
    // vit-tiny under a 12-head teacher: the adaptive block has d = 16. Without drop path: at
    // batch 2 it may legitimately drop a whole branch for both samples.
    let config = VitConfig::preset("vit-tiny").unwrap();
    let student = Student::new(&config, 12, 5, &Device::Cpu).unwrap();
    let mut data = rng(9);
    let n = config.tokens();
    let pixels = randn(&[2, 3, 224, 224], &mut data);
    let t_qk = teacher_maps(&[2, 12, n, n], &mut data);
    let t_vv = teacher_maps(&[2, 12, n, n], &mut data);
    let (qk, vv) = student.relation_logits(&pixels, None).unwrap();
    let loss = relation_loss(&qk, &vv, &t_qk, &t_vv).unwrap();
    let grads = Gradients::collect(student.params(), &loss.backward().unwrap());
    let mut distilled = 0;
    for p in student.params() {
        let g = grads.get(&p.name);
        if student.receives_distillation_gradient(&p.name) {
            distilled += 1;
            let g = g.unwrap_or_else(|| panic!("{} gets no gradient", p.name));
            let max = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                max > 0.0 && max.is_finite(),
                "{}: max |grad| = {max}",
                p.name
            );
        } else {
            assert!(
                g.is_none(),
                "{} is outside distillation yet got a gradient",
                p.name
            );
        }
    }
    // Patch embed (2), class token, 11 full blocks (12 each), last block's norm1 + qkv (4).
    assert_eq!(distilled, 2 + 1 + 11 * 12 + 4);
}

/// TINYMIM.md's formula, evaluated directly for one entry of the table.
fn pos_embed_reference(dim: usize, grid: usize, token: usize, channel: usize) -> f64 {
    if token == 0 {
        return 0.0;
    }
    let (row, col) = ((token - 1) / grid, (token - 1) % grid);
    let e = dim / 2;
    let (pos, j) = if channel < e {
        (col, channel)
    } else {
        (row, channel - e)
    };
    let k = j % (e / 2);
    let omega = 1.0 / 10000f64.powf(k as f64 / (e / 2) as f64);
    let angle = pos as f64 * omega;
    if j < e / 2 {
        angle.sin()
    } else {
        angle.cos()
    }
}

#[test]
fn sincos_position_embedding_matches_the_f64_formula() {
    for (dim, grid) in [(32, 4), (192, 14), (384, 16)] {
        let table = sincos_pos_embed(dim, grid, &Device::Cpu).unwrap();
        assert_eq!(table.dims(), &[1, 1 + grid * grid, dim]);
        let rows: Vec<Vec<f32>> = table.squeeze(0).unwrap().to_vec2().unwrap();
        for (token, row) in rows.iter().enumerate() {
            for (channel, &value) in row.iter().enumerate() {
                let want = pos_embed_reference(dim, grid, token, channel) as f32;
                assert!(
                    (value - want).abs() <= 1e-7,
                    "dim {dim}, token {token}, channel {channel}: {value} vs {want}"
                );
            }
        }
    }
}
