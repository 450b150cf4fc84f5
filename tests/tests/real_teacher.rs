//! The whole product on real data: `extract` runs the real pretrained DINOv2-S teacher over real
//! photos into a store, `train` distils a small student from that store, and the relation loss
//! falls clearly below where it started; on Fashion-MNIST, a short distillation's held-out
//! relation loss (`train eval`) falls clearly below its random-initialised twin's, and `train
//! probe` scores the student beside the twin, the teacher's own layers and raw pixels.
//!
//! Drives the release-independent binaries in the same target folder as this test
//! (`scripts/test.sh` builds them first with `cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The asset cache laid out by `scripts/setup.sh`.
fn cache() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"))
}

/// A binary of this workspace, built in the same profile as this test.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A folder of the first `count` files (sorted by name) of `src`, copied.
fn first_files(src: &Path, count: usize, dst: &Path) -> PathBuf {
    let mut names: Vec<_> = std::fs::read_dir(src)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup.sh", src.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    std::fs::create_dir_all(dst).unwrap();
    for p in names.into_iter().take(count) {
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst.to_path_buf()
}

/// `extract` with the real teacher and `teacher_config` over `images` into `store`, plus `extra`.
fn extract(teacher_config: &str, images: &Path, views: &str, store: &Path, extra: &[&str]) {
    run(Command::new(binary("extract"))
        .arg("--teacher")
        .arg(cache().join("teachers/vit_s_focus.onnx"))
        .arg("--config")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs/teachers")
                .join(teacher_config),
        )
        .arg("--images")
        .arg(images)
        .args(["--views", views, "--batch", "8", "--quiet"])
        .args(extra)
        .arg("--out")
        .arg(store));
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_short_distillation_on_real_data_beats_its_random_twin_on_held_out_images() {
    // Fashion-MNIST through the real DINOv2-S teacher at 112 px (65 tokens): 48 training images
    // × 2 views, and a held-out store of 16 test images the student never sees.
    let tmp = tempfile::tempdir().unwrap();
    let fm = cache().join("fashion-mnist");
    let images = first_files(&fm.join("unlabelled"), 48, &tmp.path().join("unlabelled"));
    let held_out = first_files(&fm.join("held-out"), 16, &tmp.path().join("held-out"));
    let (store, held_out_store) = (
        tmp.path().join("train.zarr"),
        tmp.path().join("held-out.zarr"),
    );
    extract("dinov2-small-112.toml", &images, "2", &store, &[]);
    extract(
        "dinov2-small-112.toml",
        &held_out,
        "1",
        &held_out_store,
        &[],
    );

    let run_dir = tmp.path().join("student");
    run(Command::new(binary("train"))
        .arg("--cache")
        .arg(&store)
        .args([
            "--student",
            "vit-tiny",
            "--dim",
            "96",
            "--depth",
            "3",
            "--heads",
            "3",
        ])
        .args(["--image-size", "128", "--batch", "8", "--epochs", "5"])
        .args([
            "--base-lr",
            "0.05",
            "--warmup-epochs",
            "0.5",
            "--drop-path",
            "0",
        ])
        .args(["--seed", "1", "--quiet", "--out"])
        .arg(&run_dir));
    let model = run_dir.join("model.safetensors");

    let eval = run(Command::new(binary("train"))
        .arg("eval")
        .arg("--cache")
        .arg(&held_out_store)
        .arg("--model")
        .arg(&model)
        .arg("--json")
        .arg(tmp.path().join("eval.json")));
    let report = json(&tmp.path().join("eval.json"));
    assert_eq!(report["views"], 16, "{eval}");
    assert_eq!(
        report["twin_seed"], 1,
        "the twin has the run's seed:\n{eval}"
    );
    let (student, twin) = (
        report["student"]["loss"].as_f64().unwrap(),
        report["twin"]["loss"].as_f64().unwrap(),
    );
    assert!(
        student < 0.9 * twin,
        "the distilled student's held-out relation loss {student:.4} should be clearly below its \
         random-initialised twin's {twin:.4}:\n{eval}"
    );

    // The probe prints the student beside the twin, the teacher's layers and raw pixels.
    let labelled = tmp.path().join("labelled");
    for class in std::fs::read_dir(fm.join("probe-train")).unwrap() {
        let class = class.unwrap().path();
        first_files(&class, 5, &labelled.join(class.file_name().unwrap()));
    }
    let probe = run(Command::new(binary("train"))
        .arg("probe")
        .arg("--model")
        .arg(&model)
        .arg("--images")
        .arg(&labelled)
        .arg("--teacher")
        .arg(cache().join("teachers/vit_s_focus.onnx"))
        .arg("--config")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/teachers/dinov2-small-112.toml"),
        )
        .args(["--k", "5", "--json"])
        .arg(tmp.path().join("probe.json")));
    let report = json(&tmp.path().join("probe.json"));
    let rows = report["rows"].as_array().unwrap();
    let count = |model: &str| rows.iter().filter(|r| r["model"] == model).count();
    assert_eq!(count("student"), 4, "2 points × 2 poolings:\n{probe}");
    assert_eq!(count("random-init twin"), 4, "{probe}");
    assert_eq!(
        count("teacher"),
        26,
        "12 blocks and the final norm × 2 poolings:\n{probe}"
    );
    assert_eq!(count("raw pixels"), 1, "{probe}");
    assert_eq!(
        (report["train"].as_u64(), report["test"].as_u64()),
        (Some(40), Some(10))
    );
    // DINOv2's own features tell Fashion-MNIST's classes apart far above chance (10 %).
    let best_teacher = rows
        .iter()
        .filter(|r| r["model"] == "teacher")
        .map(|r| r["knn_top1"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(best_teacher >= 0.5, "{probe}");
    assert!(
        probe.contains("summary: student") && probe.contains("random-init twin"),
        "{probe}"
    );
}

#[test]
fn student_learns_from_a_store_extracted_by_the_real_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let images = first_files(&cache().join("photos"), 4, &tmp.path().join("photos"));
    let store = tmp.path().join("relations.zarr");
    extract(
        "dinov2-small.toml",
        &images,
        "2",
        &store,
        &["--encoding", "qkv"],
    );

    // 30 steps of a small 2-block student, patch 16 at 256 px = 257 tokens, into `out`.
    // No --images: train finds the source root that extract recorded in the store.
    let distil = |out: &Path, student: &[&str]| {
        let mut cmd = Command::new(binary("train"));
        cmd.arg("--cache")
            .arg(&store)
            .args(["--student", "vit-tiny", "--depth", "2"])
            .args(student)
            .args(["--image-size", "256", "--batch", "8", "--epochs", "40"])
            .args([
                "--max-steps",
                "30",
                "--base-lr",
                "0.05",
                "--warmup-epochs",
                "2",
            ])
            .args([
                "--no-jitter",
                "--drop-path",
                "0",
                "--seed",
                "1",
                "--quiet",
                "--out",
            ])
            .arg(out);
        cmd
    };
    let falls = |run_dir: &Path| {
        let losses = losses(run_dir);
        assert_eq!(losses.len(), 30, "one metrics line per step");
        let start = losses[..3].iter().sum::<f64>() / 3.0;
        let end = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(
            end < 0.8 * start,
            "relation loss should fall clearly: first three steps {start:.4}, last three {end:.4}"
        );
    };

    // A student whose width the teacher's 6 heads divide.
    let run_dir = tmp.path().join("student");
    run(&mut distil(&run_dir, &["--dim", "96", "--heads", "3"]));
    falls(&run_dir);

    // Width 64, which 6 heads do not divide: refused with the teacher's heads, trained with 4
    // relation heads formed from the same store.
    let narrow = ["--dim", "64", "--heads", "4"];
    let refused = distil(&tmp.path().join("refused"), &narrow)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--relation-heads"),
        "{err}"
    );
    let run_dir = tmp.path().join("four-heads");
    run(distil(&run_dir, &narrow).args(["--relation-heads", "4"]));
    falls(&run_dir);
    assert_eq!(json(&run_dir.join("config.json"))["relation_heads"], 4);
}

/// Per-step losses of a run's `metrics.jsonl`.
fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_student_trained_from_int8_targets_follows_the_float16_run_step_by_step() {
    // The same views of the same photos through the real teacher, stored as `ln1` (float16)
    // and as `ln1-int8`; the same student, seed and steps trained from each.
    let tmp = tempfile::tempdir().unwrap();
    let images = first_files(&cache().join("photos"), 4, &tmp.path().join("photos"));
    let mut runs = Vec::new();
    for encoding in ["ln1", "ln1-int8"] {
        let store = tmp.path().join(format!("{encoding}.zarr"));
        extract(
            "dinov2-small.toml",
            &images,
            "2",
            &store,
            &["--encoding", encoding],
        );
        let out = tmp.path().join(format!("run-{encoding}"));
        run(Command::new(binary("train"))
            .arg("--cache")
            .arg(&store)
            .args(["--student", "vit-tiny", "--depth", "2", "--dim", "96"])
            .args(["--heads", "3", "--image-size", "256", "--batch", "8"])
            .args(["--epochs", "40", "--max-steps", "10", "--base-lr", "0.05"])
            .args(["--warmup-epochs", "2", "--no-jitter", "--drop-path", "0"])
            .args(["--seed", "1", "--quiet", "--out"])
            .arg(&out));
        runs.push(losses(&out));
    }
    let (half, int8) = (&runs[0], &runs[1]);
    assert_eq!((half.len(), int8.len()), (10, 10));
    // The int8 targets differ from the float16 ones by ~2e-5 nats of KL per row (BENCHMARKS.md,
    // "An 8-bit ln1"); measured here: per-step losses within 3.5e-5 nats of each other over 30
    // steps. 1e-4 nats leaves room for other machines' float reduction orders; a loss moved by
    // anything but the targets' rounding (a wrong scale, a lost sign) lands far outside it.
    for (step, (a, b)) in half.iter().zip(int8).enumerate() {
        let diff = (a - b).abs();
        assert!(
            diff <= 1e-4,
            "step {}: float16 loss {a:.6}, int8 loss {b:.6} (difference {diff:.2e} nats)",
            step + 1
        );
    }
    assert!(
        half.iter().zip(int8).any(|(a, b)| a != b),
        "the int8 targets must round something"
    );
    assert!(int8[9] < 0.9 * int8[0], "the int8 run learns: {int8:?}");
}
