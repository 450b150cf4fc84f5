//! `extract teacher` end to end on the tiny MAE fixture (tests/fixtures/mae_tiny, made by
//! make_fixture.py with PyTorch + timm): the exported ONNX, run by ONNX Runtime through the same
//! loader `extract` uses, reproduces PyTorch's float32 ln1, q, k, v, r_qk and r_vv of target
//! block 3; float16 weights stay within float16 tolerance; a student `.safetensors` with its
//! `config.json` exports too, with another relation-head split; bad checkpoints are refused
//! with the tensor, expected and found shape named.
//!
//! Agreement measure, per output: max |ours − reference| / max |reference| over all elements.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, ArrayViewD, Axis, Ix4};
use tinymim_extract::teacher::{Teacher, TeacherOptions};
use tinymim_formats::{Normalization, TeacherGeometry};

/// float32 parity bound (the fixture measures about 2e-6).
const F32_TOL: f64 = 1e-5;
/// Bound with float16-stored weights: each weight is rounded with relative error ≤ 2⁻¹¹ ≈ 4.9e-4;
/// through three blocks the outputs move by a few times that (the fixture measures about 1.3e-3).
const F16_TOL: f64 = 5e-3;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mae_tiny")
        .join(name)
}

/// The fixture's architecture as flags, target block 3 of 4.
const TINY_FLAGS: [&str; 14] = [
    "--dim",
    "64",
    "--depth",
    "4",
    "--heads",
    "4",
    "--patch",
    "16",
    "--image-size",
    "64",
    "--block",
    "3",
    "--arch",
    "mae-tiny",
];

/// Runs `extract teacher` with `args`.
fn extract_teacher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_extract"))
        .arg("teacher")
        .args(args)
        .output()
        .unwrap()
}

/// `extract teacher --checkpoint CHECKPOINT --out OUT EXTRA…`.
fn export(checkpoint: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    extract_teacher(&args)
}

/// Exports `checkpoint` to `out` and insists that it worked.
fn export_ok(checkpoint: &Path, out: &Path, extra: &[&str]) {
    let output = export(checkpoint, out, extra);
    assert!(
        output.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Exports expecting failure; returns stderr, and checks that no output file was left behind.
fn export_err(checkpoint: &Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = export(checkpoint, &dir.path().join("teacher.onnx"), extra);
    assert!(
        !output.status.success(),
        "export of a bad checkpoint succeeded"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a failed export left files"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The PyTorch reference: `pixels` and the six outputs, as f64 arrays.
fn reference() -> HashMap<String, ArrayD<f64>> {
    candle_core::safetensors::load(fixture("reference.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, to_array(&t)))
        .collect()
}

fn to_array(t: &Tensor) -> ArrayD<f64> {
    let values = t
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    ArrayD::from_shape_vec(t.dims(), values).unwrap()
}

/// Runs an exported teacher through `extract`'s loader on the reference pixels; returns the six
/// outputs by contract name.
fn run_teacher(onnx: &Path) -> (Teacher, HashMap<&'static str, ArrayD<f64>>) {
    let options = TeacherOptions {
        threads: Some(2),
        extra_outputs: vec!["r_qk".into(), "r_vv".into()],
        ..TeacherOptions::default()
    };
    let mut teacher = Teacher::load(onnx, None, &options).unwrap();
    let pixels = &reference()["pixels"];
    let flat: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
    let batch = teacher.run(&flat, pixels.shape()[0]).unwrap();
    let f64s = |a: ArrayViewD<f32>| a.mapv(f64::from);
    let outputs = HashMap::from([
        ("ln1", f64s(batch.ln1.as_ref().unwrap().view().into_dyn())),
        ("q", f64s(batch.q.view().into_dyn())),
        ("k", f64s(batch.k.view().into_dyn())),
        ("v", f64s(batch.v.view().into_dyn())),
        ("r_qk", f64s(batch.extra[0].view())),
        ("r_vv", f64s(batch.extra[1].view())),
    ]);
    (teacher, outputs)
}

/// max |a − b| / max |b|.
fn relative_error(ours: &ArrayD<f64>, reference: &ArrayD<f64>) -> f64 {
    assert_eq!(ours.shape(), reference.shape());
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    diff / reference.iter().map(|b| b.abs()).fold(0.0, f64::max)
}

fn assert_parity(
    outputs: &HashMap<&str, ArrayD<f64>>,
    reference: &HashMap<String, ArrayD<f64>>,
    tol: f64,
) {
    for name in ["ln1", "q", "k", "v", "r_qk", "r_vv"] {
        let err = relative_error(&outputs[name], &reference[name]);
        assert!(
            err <= tol,
            "{name}: relative error {err:.3e} over {tol:.0e}"
        );
    }
}

/// softmax(a bᵀ · d^-½) over the last axis, in f64: `[B, H, N, d]` → `[B, H, N, N]`.
fn relation_f64(a: &ArrayD<f64>, b: &ArrayD<f64>) -> ArrayD<f64> {
    let (a, b) = (
        a.view().into_dimensionality::<Ix4>().unwrap(),
        b.view().into_dimensionality::<Ix4>().unwrap(),
    );
    let (bs, h, n, d) = a.dim();
    let mut out = ArrayD::zeros(vec![bs, h, n, n]);
    for (bi, hi, i) in ndarray::indices((bs, h, n)) {
        let logits: Vec<f64> = (0..n)
            .map(|j| {
                (0..d)
                    .map(|c| a[[bi, hi, i, c]] * b[[bi, hi, j, c]])
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        for (j, l) in logits.iter().enumerate() {
            out[[bi, hi, i, j]] = (l - max).exp() / total;
        }
    }
    out
}

/// Merges pairs of adjacent heads: `[B, H, N, d]` → `[B, H/2, N, 2d]` (head h of the merged
/// split is channels `[h·2d, (h+1)·2d)`, i.e. old heads 2h and 2h+1 side by side).
fn merge_head_pairs(x: &ArrayD<f64>) -> ArrayD<f64> {
    let x = x.view().into_dimensionality::<Ix4>().unwrap();
    let (b, h, n, d) = x.dim();
    let mut out = ArrayD::zeros(vec![b, h / 2, n, 2 * d]);
    for ((bi, hi, i, c), v) in x.indexed_iter() {
        out[[bi, hi / 2, i, (hi % 2) * d + c]] = *v;
    }
    out
}

#[test]
fn exported_mae_checkpoint_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("teacher.onnx");
    export_ok(&fixture("mae_tiny.pth"), &onnx, &TINY_FLAGS);
    let (teacher, outputs) = run_teacher(&onnx);
    let reference = reference();
    assert_parity(&outputs, &reference, F32_TOL);

    // The metadata round-trips through extract's contract reader.
    let expected = TeacherGeometry {
        arch: "mae-tiny".into(),
        tokens: 17,
        heads: 4,
        dim: 64,
        target_block: 3,
        patch: 16,
        image_size: 64,
        normalization: Normalization::IMAGENET,
    };
    assert_eq!(teacher.geometry(), expected);

    // The contract's qkv initializers reproduce q, k, v from ln1 (the ln1 encoding's decode).
    let qkv = teacher
        .qkv_params()
        .expect("exported teachers carry the qkv initializers");
    let ln1 = &reference["ln1"];
    for (part, name) in ["q", "k", "v"].iter().enumerate() {
        let target = &reference[*name];
        let mut decoded = ArrayD::zeros(target.shape());
        for ((b, h, i, c), out) in decoded
            .view_mut()
            .into_dimensionality::<Ix4>()
            .unwrap()
            .indexed_iter_mut()
        {
            let row = part * 64 + h * 16 + c;
            *out = qkv.bias[row] as f64
                + (0..64)
                    .map(|j| qkv.weight[row * 64 + j] as f64 * ln1[[b, i, j]])
                    .sum::<f64>();
        }
        let err = relative_error(&decoded, target);
        assert!(
            err <= F32_TOL,
            "{name} from ln1 and the qkv initializers: relative error {err:.3e}"
        );
    }
}

#[test]
fn float16_weights_stay_within_float16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (f32_onnx, f16_onnx) = (dir.path().join("f32.onnx"), dir.path().join("f16.onnx"));
    export_ok(&fixture("mae_tiny.pth"), &f32_onnx, &TINY_FLAGS);
    let mut flags = TINY_FLAGS.to_vec();
    flags.extend(["--dtype", "float16"]);
    export_ok(&fixture("mae_tiny.pth"), &f16_onnx, &flags);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(
        size(&f16_onnx) < 0.6 * size(&f32_onnx),
        "float16 weights should halve the file"
    );
    let (_, outputs) = run_teacher(&f16_onnx);
    assert_parity(&outputs, &reference(), F16_TOL);
}

/// The fixture re-saved as a student export: `model.safetensors` + `config.json` as `train`
/// writes them.
fn student_export(dir: &Path) -> PathBuf {
    let tensors =
        candle_core::pickle::read_all_with_key(fixture("mae_tiny.pth"), Some("model")).unwrap();
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect::<HashMap<_, _>>(), &path).unwrap();
    let config = r#"{"format": "tinymim-student", "architecture": "vit", "dim": 64, "depth": 4,
        "heads": 4, "mlp_dim": 256, "patch": 16, "image_size": 64, "tokens": 17,
        "relation_heads": 8}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    path
}

#[test]
fn student_safetensors_exports_with_its_config_and_any_head_split() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = student_export(dir.path());
    let reference = reference();

    // Architecture from the config.json beside the checkpoint; heads default to the model's.
    let onnx = dir.path().join("same-heads.onnx");
    export_ok(&checkpoint, &onnx, &["--block", "3"]);
    let (teacher, outputs) = run_teacher(&onnx);
    assert_eq!(teacher.geometry().heads, 4);
    assert_parity(&outputs, &reference, F32_TOL);

    // --heads 2 re-splits only the target block: its q/k/v are the reference's with adjacent
    // heads merged, and its maps are recomputed from those in f64.
    let onnx = dir.path().join("two-heads.onnx");
    export_ok(&checkpoint, &onnx, &["--block", "3", "--heads", "2"]);
    let (teacher, outputs) = run_teacher(&onnx);
    assert_eq!(
        (teacher.geometry().heads, teacher.geometry().head_dim()),
        (2, 32)
    );
    let mut merged: HashMap<String, ArrayD<f64>> = HashMap::new();
    merged.insert("ln1".into(), reference["ln1"].clone());
    for name in ["q", "k", "v"] {
        merged.insert(name.into(), merge_head_pairs(&reference[name]));
    }
    merged.insert("r_qk".into(), relation_f64(&merged["q"], &merged["k"]));
    merged.insert("r_vv".into(), relation_f64(&merged["v"], &merged["v"]));
    assert_parity(&outputs, &merged, F32_TOL);
    assert_eq!(outputs["r_qk"].len_of(Axis(1)), 2);
}

#[test]
fn bad_checkpoints_name_the_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors: HashMap<String, Tensor> =
        candle_core::pickle::read_all_with_key(fixture("mae_tiny.pth"), Some("model"))
            .unwrap()
            .into_iter()
            .collect();
    tensors.remove("blocks.1.mlp.fc1.weight");
    let missing = dir.path().join("missing.safetensors");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let err = export_err(&missing, &TINY_FLAGS);
    assert!(
        err.contains("`blocks.1.mlp.fc1.weight` is missing") && err.contains("[256, 64]"),
        "{err}"
    );

    let mut flags = TINY_FLAGS.to_vec();
    flags.extend(["--mlp-dim", "128"]);
    let err = export_err(&fixture("mae_tiny.pth"), &flags);
    assert!(
        err.contains("`blocks.0.mlp.fc1.weight` has shape [256, 64], expected [128, 64]"),
        "{err}"
    );

    let err = export_err(&fixture("mae_tiny.pth"), &["--preset", "mae-vit-base"]);
    assert!(
        err.contains("has 4 blocks") && err.contains("depth = 12"),
        "{err}"
    );

    // LayerScale would change the network: refused by name, not ignored.
    let mut tensors: HashMap<String, Tensor> =
        candle_core::pickle::read_all_with_key(fixture("mae_tiny.pth"), Some("model"))
            .unwrap()
            .into_iter()
            .collect();
    let gamma = Tensor::ones(64, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    tensors.insert("blocks.2.ls1.gamma".into(), gamma);
    let layerscale = dir.path().join("layerscale.safetensors");
    candle_core::safetensors::save(&tensors, &layerscale).unwrap();
    let err = export_err(&layerscale, &TINY_FLAGS);
    assert!(
        err.contains("blocks.2.ls1.gamma") && err.contains("LayerScale"),
        "{err}"
    );
    // MAE's decoder is listed as ignored, and the export goes ahead.
    tensors.remove("blocks.2.ls1.gamma");
    let mask = Tensor::zeros(
        (1, 1, 32),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    tensors.insert("mask_token".into(), mask);
    let with_decoder = dir.path().join("with-decoder.safetensors");
    candle_core::safetensors::save(&tensors, &with_decoder).unwrap();
    let output = export(&with_decoder, &dir.path().join("ok.onnx"), &TINY_FLAGS);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("ignored 1 tensor: the MAE decoder (1)"),
        "{log}"
    );

    let garbage = dir.path().join("garbage.pth");
    std::fs::write(&garbage, b"not a zip archive").unwrap();
    let err = export_err(&garbage, &TINY_FLAGS);
    assert!(
        err.contains("cannot read checkpoint") && err.contains("garbage.pth"),
        "{err}"
    );
}
