//! The whole product on real data: `extract` runs the real pretrained DINOv2-S teacher over real
//! photos into a store, `train` distils a small student from that store, and the relation loss
//! falls clearly below where it started; `train probe` then scores the exported student.
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

/// A folder with the first `count` cached photos (sorted by name).
fn photos(count: usize, dir: &Path) -> PathBuf {
    let src = cache().join("photos");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup.sh", src.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg"))
        .collect();
    names.sort();
    let out = dir.join("photos");
    std::fs::create_dir_all(&out).unwrap();
    for p in names.into_iter().take(count) {
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    out
}

#[test]
fn student_learns_from_a_store_extracted_by_the_real_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let images = photos(4, tmp.path());
    let store = tmp.path().join("relations.zarr");
    run(Command::new(binary("extract"))
        .arg("--teacher")
        .arg(cache().join("teachers/vit_s_focus.onnx"))
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/teachers/dinov2-small.toml"))
        .arg("--images")
        .arg(&images)
        .args([
            "--views",
            "2",
            "--encoding",
            "qkv",
            "--batch",
            "4",
            "--quiet",
            "--out",
        ])
        .arg(&store));

    // A small student whose width the teacher's 6 heads divide, patch 16 at 256 px = 257 tokens.
    let run_dir = tmp.path().join("student");
    // No --images: train finds the source root that extract recorded in the store.
    run(Command::new(binary("train"))
        .arg("--cache")
        .arg(&store)
        .args([
            "--student",
            "vit-tiny",
            "--dim",
            "96",
            "--depth",
            "2",
            "--heads",
            "3",
        ])
        .args([
            "--image-size",
            "256",
            "--batch",
            "8",
            "--epochs",
            "40",
            "--max-steps",
            "30",
        ])
        .args([
            "--base-lr",
            "0.05",
            "--warmup-epochs",
            "2",
            "--no-jitter",
            "--drop-path",
            "0",
        ])
        .args(["--seed", "1", "--quiet", "--out"])
        .arg(&run_dir));

    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 30, "one metrics line per step");
    let start = losses[..3].iter().sum::<f64>() / 3.0;
    let end = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(
        end < 0.8 * start,
        "relation loss should fall clearly: first three steps {start:.4}, last three {end:.4}"
    );

    // The exported student loads and scores on a labelled folder (4 digits of each class).
    let labelled = tmp.path().join("labelled");
    for class in 0..10 {
        let (src, dst) = (
            cache().join("probe").join(class.to_string()),
            labelled.join(class.to_string()),
        );
        std::fs::create_dir_all(&dst).unwrap();
        for i in 1..=4 {
            let name = format!("{class}_{i:03}.png");
            std::fs::copy(src.join(&name), dst.join(&name)).unwrap_or_else(|e| {
                panic!("{}: {e}; run scripts/setup.sh", src.join(&name).display())
            });
        }
    }
    let probe = run(Command::new(binary("train"))
        .arg("probe")
        .arg("--model")
        .arg(run_dir.join("model.safetensors"))
        .arg("--images")
        .arg(&labelled)
        .args(["--k", "5"]));
    assert!(probe.contains("top-1"), "probe prints top-1:\n{probe}");
}
