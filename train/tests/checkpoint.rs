//! Exact resumption from a checkpoint, checkpoint errors, and the timm/MAE export.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{randn, rng, teacher_maps};
use tinymim_train::{
    export_student, AdamW, AdamWConfig, Checkpoint, Distiller, LrSchedule, MicroBatch, Student,
    TrainError, TrainRng, VitConfig,
};

const RELATION_HEADS: usize = 4;

fn tiny() -> VitConfig {
    VitConfig {
        dim: 16,
        depth: 3,
        heads: 2,
        mlp_dim: 32,
        patch: 8,
        image_size: 16,
        drop_path: 0.3,
    }
}

fn fresh_distiller(drop_seed: u64) -> Distiller {
    let student = Student::new(&tiny(), RELATION_HEADS, 11, &Device::Cpu).unwrap();
    let optimizer = AdamW::new(student.params(), AdamWConfig::default());
    Distiller {
        student,
        optimizer,
        // Two optimiser steps per epoch, one epoch of warm-up, cosine over four.
        schedule: LrSchedule::scaled(0.05, 4, 1.0, 4.0, 2),
        rng: TrainRng::from_seed(drop_seed),
        step: 0,
        clip_grad: Some(0.5),
    }
}

/// The synthetic data of step `step`: two micro-batches of two images.
fn batch(step: u64) -> Vec<[Tensor; 3]> {
    let n = tiny().tokens();
    let mut r = rng(1000 + step);
    (0..2)
        .map(|_| {
            [
                randn(&[2, 3, 16, 16], &mut r),
                teacher_maps(&[2, RELATION_HEADS, n, n], &mut r),
                teacher_maps(&[2, RELATION_HEADS, n, n], &mut r),
            ]
        })
        .collect()
}

fn run(d: &mut Distiller, steps: std::ops::Range<u64>) {
    for step in steps {
        assert_eq!(d.step, step);
        let data = batch(step);
        let micro: Vec<MicroBatch> = data
            .iter()
            .map(|[p, qk, vv]| MicroBatch {
                pixels: p,
                target_qk: qk,
                target_vv: vv,
            })
            .collect();
        let report = d.step(&micro).unwrap();
        assert!(report.loss.is_finite() && report.grad_norm > 0.0);
    }
}

fn weights(d: &Distiller) -> HashMap<String, Vec<f32>> {
    d.student
        .params()
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.var.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_resumed_run_continues_exactly() {
    const TOTAL: u64 = 6;
    const SPLIT: u64 = 2;
    let mut straight = fresh_distiller(7);
    let initial = weights(&straight);
    run(&mut straight, 0..TOTAL);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let mut first = fresh_distiller(7);
    run(&mut first, 0..SPLIT);
    let loop_state = serde_json::json!({"epoch": 1, "cursor": [3, 4]});
    Checkpoint::save(&path, &first, &loop_state).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        vec!["ckpt.safetensors"],
        "the temp file was renamed into place"
    );
    drop(first);

    let loaded = Checkpoint::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.loop_state, loop_state);
    let mut resumed = loaded.distiller;
    assert_eq!(resumed.step, SPLIT);
    run(&mut resumed, SPLIT..TOTAL);

    let (a, b) = (weights(&straight), weights(&resumed));
    for (name, w) in &a {
        assert_eq!(w, &b[name], "{name} differs after resuming");
    }
    assert_ne!(a, initial, "training moved the weights");
    for (name, m) in straight.optimizer.state() {
        let r = &resumed.optimizer.state()[name];
        assert_eq!(m.step, r.step);
        assert_eq!(
            m.v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            r.v.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    assert_eq!(straight.rng.state(), resumed.rng.state());

    // The RNG position matters: the same resume with a different drop-path stream diverges.
    let mut other = Checkpoint::load(&path, &Device::Cpu).unwrap().distiller;
    other.rng = TrainRng::from_seed(8);
    run(&mut other, SPLIT..TOTAL);
    assert_ne!(
        weights(&other),
        a,
        "drop path draws from the restored stream"
    );
}

#[test]
fn bad_checkpoint_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let err = Checkpoint::load(&junk, &Device::Cpu).unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("junk.safetensors"), "{err}");

    // An export is a safetensors file but not a checkpoint.
    export_student(dir.path(), &fresh_distiller(1).student).unwrap();
    let err = Checkpoint::load(&dir.path().join("model.safetensors"), &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("not a tinymim checkpoint"),
        "{err}"
    );

    let err = Checkpoint::load(&dir.path().join("absent.safetensors"), &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, TrainError::Io { .. }) && err.to_string().contains("absent"),
        "{err}"
    );
}

#[test]
fn export_has_timm_names_and_reloads_to_the_same_student() {
    let mut d = fresh_distiller(3);
    run(&mut d, 0..1);
    let dir = tempfile::tempdir().unwrap();
    export_student(dir.path(), &d.student).unwrap();

    let tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let c = tiny();
    let shape = |n: &str| tensors[n].dims().to_vec();
    assert_eq!(shape("pos_embed"), vec![1, c.tokens(), c.dim]);
    assert_eq!(shape("cls_token"), vec![1, 1, c.dim]);
    assert_eq!(
        shape("patch_embed.proj.weight"),
        vec![c.dim, 3, c.patch, c.patch]
    );
    assert_eq!(shape("blocks.2.attn.qkv.weight"), vec![3 * c.dim, c.dim]);
    assert_eq!(shape("blocks.0.mlp.fc1.weight"), vec![c.mlp_dim, c.dim]);
    assert_eq!(shape("norm.weight"), vec![c.dim]);
    // Per block: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2 (weight + bias each).
    assert_eq!(tensors.len(), 2 + 2 + c.depth * 12 + 2);

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["relation_heads"], RELATION_HEADS);
    assert_eq!(config["dim"], c.dim);
    assert_eq!(config["layer_norm_eps"], 1e-6);
    assert!(config["relation_block_note"]
        .as_str()
        .unwrap()
        .contains("blocks.2"));

    let copy = Student::new(&c, RELATION_HEADS, 99, &Device::Cpu).unwrap();
    copy.load_weights(&tensors, "model.safetensors").unwrap();
    let pixels = randn(&[2, 3, 16, 16], &mut rng(5));
    let (a, _) = d.student.relation_logits(&pixels, None).unwrap();
    let (b, _) = copy.relation_logits(&pixels, None).unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn loading_weights_names_missing_unexpected_and_misshapen_tensors() {
    let student = Student::new(&tiny(), RELATION_HEADS, 0, &Device::Cpu).unwrap();
    let full: HashMap<String, Tensor> = student.export_tensors().into_iter().collect();

    let mut missing = full.clone();
    missing.remove("blocks.1.norm2.bias");
    let err = student.load_weights(&missing, "a.safetensors").unwrap_err();
    assert!(matches!(err, TrainError::MissingTensor { .. }));
    assert!(
        err.to_string().contains("a.safetensors")
            && err.to_string().contains("blocks.1.norm2.bias"),
        "{err}"
    );

    let mut extra = full.clone();
    extra.insert("head.weight".into(), full["norm.weight"].clone());
    let err = student.load_weights(&extra, "b.safetensors").unwrap_err();
    assert!(err.to_string().contains("head.weight"), "{err}");

    let mut bent = full;
    bent.insert(
        "cls_token".into(),
        Tensor::zeros((1, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = student.load_weights(&bent, "c.safetensors").unwrap_err();
    assert!(matches!(err, TrainError::Shape { .. }));
    assert!(err.to_string().contains("cls_token"), "{err}");
}
