//! The online teacher takes a checkpoint's position embedding as stored, learned ones
//! included: a learned `pos_embed` that adds the same vector `c` to every patch token (and
//! nothing to the class token) must act exactly like adding `c` to the patch embedding's bias.

mod common;
#[path = "loop_fixture/mod.rs"]
mod loop_fixture;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::max_rel_err;
use loop_fixture::{load_teacher, teacher_config, write_teacher, TEACHER_HEADS};

/// The checkpoint at `from` with `edit` applied to its tensors, saved as `to`.
fn edited(from: &Path, to: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(from, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, to).unwrap();
}

#[test]
fn a_learned_position_embedding_is_used_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = teacher_config();
    let base = write_teacher(&dir.path().join("base"), &config, TEACHER_HEADS, 7);
    let d = config.dim;
    let n = config.tokens();
    let c = Tensor::randn(0f32, 0.5, (1, 1, d), &Device::Cpu).unwrap();
    // pos_embed + c on the patch tokens only: a learned (non sin-cos) embedding.
    let learned = dir.path().join("learned.safetensors");
    edited(&base, &learned, |t| {
        let shift = Tensor::cat(
            &[
                &Tensor::zeros((1, 1, d), candle_core::DType::F32, &Device::Cpu).unwrap(),
                &c.broadcast_as((1, n - 1, d)).unwrap(),
            ],
            1,
        )
        .unwrap();
        let pos = t["pos_embed"].clone();
        t.insert("pos_embed".into(), (pos + shift).unwrap());
    });
    // The same shift through the patch embedding's bias, position embedding untouched.
    let biased = dir.path().join("biased.safetensors");
    edited(&base, &biased, |t| {
        let bias = t["patch_embed.proj.bias"].clone();
        t.insert(
            "patch_embed.proj.bias".into(),
            (bias + c.flatten_all().unwrap()).unwrap(),
        );
    });

    let s = config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (3, 3, s, s), &Device::Cpu).unwrap();
    let maps = |path: &Path| load_teacher(path, TEACHER_HEADS).maps(&pixels).unwrap();
    let (base_qk, base_vv) = maps(&base);
    let (learned_qk, learned_vv) = maps(&learned);
    let (biased_qk, biased_vv) = maps(&biased);
    assert!(max_rel_err(&learned_qk, &biased_qk) < 1e-5);
    assert!(max_rel_err(&learned_vv, &biased_vv) < 1e-5);
    // ...and it is not ignored.
    assert!(max_rel_err(&learned_qk, &base_qk) > 1e-3);
    assert!(max_rel_err(&learned_vv, &base_vv) > 1e-3);
}

#[test]
fn a_position_embedding_of_another_size_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = teacher_config();
    let base = write_teacher(&dir.path().join("base"), &config, TEACHER_HEADS, 7);
    let bad = dir.path().join("bad.safetensors");
    edited(&base, &bad, |t| {
        let pos = t["pos_embed"].narrow(1, 0, config.tokens() - 1).unwrap();
        t.insert("pos_embed".into(), pos);
    });
    let options = loop_fixture::teacher_options(TEACHER_HEADS);
    let options = tinymim_train::online::TeacherOptions {
        image_size: Some(config.image_size),
        ..options
    };
    let error = tinymim_train::online::OnlineTeacher::load(&bad, &options, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(error.contains("bad.safetensors"), "{error}");
    assert!(error.contains("pos_embed"), "{error}");
}
