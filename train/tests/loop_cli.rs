//! The `train` binary: a complete run from a store, and bad input refused before training
//! with one sentence naming the thing at fault.

mod loop_fixture;
#[path = "../../formats/tests/support/s3.rs"]
mod s3;

use std::path::Path;
use std::process::{Command, Output};

use loop_fixture::{teacher_config, write_images, write_store, write_teacher, World};
use tinymim_formats::{Encoding, Hash32, RelationStore, StoreHeader, ViewRecipe};
use tinymim_train::config::VitConfig;

/// The tiny student's flags.
const STUDENT: &[&str] = &[
    "--student",
    "vit-tiny",
    "--dim",
    "24",
    "--depth",
    "2",
    "--heads",
    "3",
    "--patch",
    "8",
    "--image-size",
    "32",
];

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .expect("the train binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the tiny student on `store` into `out` (1 epoch, batch 2, no warm-up, quiet) with
/// `extra` flags after those (a later flag overrides an earlier one).
fn train_on(store: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--cache", store.to_str().unwrap()];
    args.extend_from_slice(STUDENT);
    args.extend_from_slice(&[
        "--epochs",
        "1",
        "--batch",
        "2",
        "--warmup-epochs",
        "0",
        "--quiet",
    ]);
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    train(&args)
}

/// Runs the tiny student on `store` with extra flags, expecting failure; returns stderr.
fn refused(store: &Path, out: &Path, extra: &[&str]) -> String {
    let result = train_on(store, out, extra);
    assert!(!result.status.success(), "expected a refusal");
    assert!(
        !out.join("metrics.jsonl").exists(),
        "refused before training started"
    );
    let err = stderr(&result);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn trains_from_a_store_with_the_recorded_source_root() {
    let world = World::new(3, 2);
    let out = world.dir.path().join("run");
    let result = train_on(&world.store, &out, &["--epochs", "2", "--base-lr", "0.1"]);
    assert!(result.status.success(), "{}", stderr(&result));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.starts_with("trained 6 steps (2.00 epochs)"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    assert!(out.join("model.safetensors").is_file());
}

/// The `loss` of every step in a run's metrics log.
fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["loss"].as_f64().expect("a loss per step")
        })
        .collect()
}

#[test]
fn trains_from_an_object_store_exactly_as_from_the_same_store_in_a_folder() {
    let world = World::new(3, 2);
    let url = s3::server().fresh_url("train");
    write_store(
        &url,
        &world.images,
        &world.teacher,
        loop_fixture::TEACHER_HEADS,
        2,
        loop_fixture::SEED,
    );
    let (local, remote) = (world.dir.path().join("local"), world.dir.path().join("s3"));
    for (store, out) in [(&world.store, &local), (&url, &remote)] {
        let result = train_on(store, out, &["--epochs", "2", "--base-lr", "0.1"]);
        assert!(result.status.success(), "{}", stderr(&result));
    }
    let (a, b) = (losses(&local), losses(&remote));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "the same rows give the same run, bit for bit");
}

#[test]
fn bf16_precision_runs_the_same_step_to_bf16_accuracy() {
    let world = World::new(3, 2);
    let first_loss = |precision: &str| {
        let out = world.dir.path().join(format!("run-{precision}"));
        let result = train_on(
            &world.store,
            &out,
            &["--max-steps", "1", "--precision", precision],
        );
        assert!(result.status.success(), "{}", stderr(&result));
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        line["loss"].as_f64().unwrap()
    };
    let (full, low) = (first_loss("f32"), first_loss("bf16"));
    let rel = ((low - full) / full).abs();
    assert!(rel < 1e-2, "bf16 loss {low} vs f32 {full}");
    assert!(rel > 0.0, "--precision bf16 changed nothing");
}

#[test]
fn a_store_without_committed_rows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("empty.zarr");
    let teacher = write_teacher(&dir.path().join("teacher"), &teacher_config(), 2, 1);
    let t = loop_fixture::load_teacher(&teacher, 2);
    let header = StoreHeader {
        teacher: Hash32::of_bytes(b"teacher"),
        geometry: t.geometry().clone(),
        encoding: Encoding::Maps,
        recipe: ViewRecipe::default(),
    };
    let opened = RelationStore::create_or_open(&store, &header, None).unwrap();
    drop(opened.begin_segment(4).unwrap()); // a segment that never commits a row
    let err = refused(&store, &dir.path().join("run"), &["--images", "."]);
    assert!(
        err.contains("empty.zarr") && err.contains("no committed rows"),
        "{err}"
    );
}

#[test]
fn a_student_width_the_teacher_heads_do_not_divide_is_refused() {
    // A 3-head teacher of width 24; a student of width 32 cannot split into 3 relation heads.
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    write_images(&images, 2);
    let config = VitConfig {
        dim: 24,
        heads: 3,
        mlp_dim: 48,
        ..teacher_config()
    };
    let teacher = write_teacher(&dir.path().join("teacher"), &config, 3, 2);
    let store = dir.path().join("r.zarr");
    write_store(&store, &images, &teacher, 3, 1, 0);
    let err = refused(
        &store,
        &dir.path().join("run"),
        &["--dim", "32", "--heads", "2"],
    );
    assert!(
        err.contains("`dim` = 32") && err.contains("relation head count 3"),
        "{err}"
    );
}

#[test]
fn a_token_count_other_than_the_teachers_is_refused() {
    let world = World::new(2, 1);
    let err = refused(
        &world.store,
        &world.dir.path().join("run"),
        &["--image-size", "48"],
    );
    assert!(
        err.contains("37 tokens") && err.contains("17 tokens"),
        "{err}"
    );
}

#[test]
fn a_missing_source_image_is_refused_naming_it() {
    let world = World::new(3, 1);
    std::fs::remove_file(world.images.join("img1.png")).unwrap();
    let err = refused(&world.store, &world.dir.path().join("run"), &[]);
    assert!(
        err.contains("img1.png") && err.contains("--images"),
        "{err}"
    );
}

#[test]
fn a_changed_source_image_is_refused_naming_it() {
    let world = World::new(2, 2);
    let path = world.images.join("img0.png");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x55; // same size, other bytes
    std::fs::write(&path, bytes).unwrap();
    let result = train_on(&world.store, &world.dir.path().join("run"), &[]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("img0.png") && err.contains("changed since extraction"),
        "{err}"
    );
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let world = World::new(2, 1);
    let err = refused(
        &world.store,
        &world.dir.path().join("run"),
        &["--device", "cuda"],
    );
    assert!(err.contains("without CUDA support"), "{err}");
}

#[test]
fn help_lists_the_options_and_missing_out_is_refused() {
    let help = train(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--cache",
        "--teacher",
        "--student",
        "--recipe",
        "--resume",
        "--no-jitter",
        "probe",
        "eval",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    let result = train(&["--cache", "x.zarr", "--epochs", "1"]);
    assert!(!result.status.success());
    assert!(stderr(&result).contains("--out"));
}

#[test]
fn recipes_parse_and_fill_the_run() {
    for recipe in ["tinymim-300ep", "cpu-quick", "quickstart", "transfer"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs/recipes")
            .join(format!("{recipe}.toml"));
        // An unreadable store is the first thing a valid recipe runs into.
        let result = train(&[
            "--cache",
            "/nonexistent.zarr",
            "--recipe",
            path.to_str().unwrap(),
            "--out",
            "/tmp/x",
        ]);
        let err = stderr(&result);
        assert!(err.contains("nonexistent.zarr"), "{recipe}: {err}");
    }
}

#[test]
fn trains_online_from_a_teacher_checkpoint_then_probes_the_export() {
    let world = World::new(3, 2);
    let out = world.dir.path().join("online");
    let mut args = vec![
        "--teacher",
        world.teacher.to_str().unwrap(),
        "--images",
        world.images.to_str().unwrap(),
        "--views",
        "2",
    ];
    args.extend_from_slice(STUDENT);
    args.extend_from_slice(&[
        "--epochs",
        "1",
        "--batch",
        "2",
        "--warmup-epochs",
        "0",
        "--max-steps",
        "2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    // The head count comes from the config.json exported beside the teacher's weights.
    let result = train(&args);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(String::from_utf8_lossy(&result.stdout).starts_with("trained 2 steps"));

    // Probe the export over a labelled copy of the images (class = sub-folder).
    let labelled = world.dir.path().join("labelled");
    for (i, class) in ["a", "a", "b"].iter().enumerate() {
        std::fs::create_dir_all(labelled.join(class)).unwrap();
        let name = format!("img{i}.png");
        std::fs::copy(world.images.join(&name), labelled.join(class).join(&name)).unwrap();
    }
    let weights = out.join("model.safetensors");
    let result = train(&[
        "probe",
        "--model",
        weights.to_str().unwrap(),
        "--images",
        labelled.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.contains("random-init twin") && stdout.contains("summary: student"),
        "{stdout}"
    );
}

#[test]
fn trains_with_nothing_but_store_student_and_out() {
    // No --epochs, --warmup-epochs or --image-size: epochs default to 100, warm-up to 5 % of
    // them, and the input size to the one at which the student's patch (8) gives the store's
    // token count. --max-steps and --batch only keep the test short.
    let world = World::new(3, 2);
    let out = world.dir.path().join("run");
    let student: Vec<&str> = STUDENT
        .iter()
        .copied()
        .take_while(|a| *a != "--image-size")
        .collect();
    let mut args = vec!["--cache", world.store.to_str().unwrap()];
    args.extend_from_slice(&student);
    args.extend_from_slice(&[
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--max-steps",
        "2",
        "--batch",
        "2",
    ]);
    let result = train(&args);
    assert!(result.status.success(), "{}", stderr(&result));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        config.contains("\"image_size\": 32") || config.contains("\"image_size\":32"),
        "{config}"
    );
}

/// An MAE-named ViT checkpoint of the standard ViT-Ti width (192, so 3 heads by the width
/// table) with no `config.json` beside it, MAE's decoder tensors included, plus `extra`
/// tensors; saved as `dir/<name>`.
fn mae_named_checkpoint(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let config = VitConfig {
        dim: 192,
        mlp_dim: 768,
        heads: 3,
        ..teacher_config()
    };
    let exported = write_teacher(&dir.join("export"), &config, 3, 4);
    let mut tensors = candle_core::safetensors::load(&exported, &candle_core::Device::Cpu).unwrap();
    let cpu = candle_core::Device::Cpu;
    let f32 = candle_core::DType::F32;
    tensors.insert(
        "decoder_embed.weight".into(),
        candle_core::Tensor::zeros((64, 192), f32, &cpu).unwrap(),
    );
    tensors.insert(
        "mask_token".into(),
        candle_core::Tensor::zeros((1, 1, 64), f32, &cpu).unwrap(),
    );
    for name in extra {
        tensors.insert(
            name.to_string(),
            candle_core::Tensor::ones(192, f32, &cpu).unwrap(),
        );
    }
    let path = dir.join("mae").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn the_readmes_online_command_runs_on_an_mae_checkpoint_without_config_json() {
    let world = World::new(3, 1);
    let checkpoint =
        mae_named_checkpoint(world.dir.path(), "mae_pretrain_vit_tiny.safetensors", &[]);
    let recipe =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/recipes/tinymim-300ep.toml");
    let out = world.dir.path().join("runs/vit-tiny-online");
    // README: train --teacher mae_pretrain_vit_large.safetensors --target-block 18 --images …
    //   --views 4 --student vit-base --recipe configs/recipes/tinymim-300ep.toml --out …
    // (plus the tiny student's size and two steps of batch 2).
    let mut args = vec![
        "--teacher",
        checkpoint.to_str().unwrap(),
        "--target-block",
        "2",
        "--images",
        world.images.to_str().unwrap(),
        "--views",
        "2",
    ];
    args.extend_from_slice(STUDENT);
    args.extend_from_slice(&[
        "--recipe",
        recipe.to_str().unwrap(),
        "--batch",
        "2",
        "--accum",
        "1",
        "--max-steps",
        "2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let result = train(&args);
    let err = stderr(&result);
    assert!(result.status.success(), "{err}");
    assert!(
        err.contains("ignored 2 tensors: the MAE decoder (2)"),
        "{err}"
    );
    // The student's adaptive block took the 3 heads of the width table.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["relation_heads"], 3, "{config}");

    // LayerScale would change the teacher: refused, naming the tensor, before training.
    let layerscale =
        mae_named_checkpoint(world.dir.path(), "ls.safetensors", &["blocks.0.ls1.gamma"]);
    args[1] = layerscale.to_str().unwrap();
    let out = world.dir.path().join("runs/refused");
    let n = args.len();
    args[n - 1] = out.to_str().unwrap();
    let result = train(&args);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(
        err.contains("blocks.0.ls1.gamma") && err.contains("LayerScale"),
        "{err}"
    );
    assert!(!out.join("metrics.jsonl").exists());
}

#[test]
fn a_run_killed_mid_training_resumes_with_each_step_logged_once() {
    let world = World::new(3, 2);
    let out = world.dir.path().join("killed");
    let args = |out: &Path| {
        let mut args: Vec<String> = vec!["--cache".into(), world.store.to_str().unwrap().into()];
        args.extend(STUDENT.iter().map(|s| s.to_string()));
        for a in [
            "--epochs",
            "120",
            "--batch",
            "2",
            "--warmup-epochs",
            "0",
            "--checkpoint-every",
            "3",
            "--quiet",
            "--out",
        ] {
            args.push(a.into());
        }
        args.push(out.to_str().unwrap().into());
        args
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args(&out))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let logged = || {
        std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while logged() < 10 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: no clean-up of any kind
    child.wait().unwrap();
    let before = logged();

    let mut resumed = args(&out);
    resumed.push("--resume".into());
    let result = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(&resumed)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    let read = |dir: &Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
            })
            .collect()
    };
    let steps = read(&out);
    let total = 120 * 3; // 6 views in batches of 2, 120 epochs
    assert_eq!(
        steps.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<u64>>(),
        "killed after {before} logged steps"
    );
    // And they are the uninterrupted run's steps.
    let straight = world.dir.path().join("straight");
    let result = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args(&straight))
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(steps, read(&straight));
}

#[test]
fn grouped_views_train_and_a_resume_must_keep_the_grouping() {
    let world = World::new(3, 2);
    let out = world.dir.path().join("grouped");
    let result = train_on(&world.store, &out, &["--group-views", "--max-steps", "1"]);
    assert!(result.status.success(), "{}", stderr(&result));
    let result = train_on(&world.store, &out, &["--resume"]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("--group-views"), "{err}");
}

#[test]
fn a_store_smaller_than_the_default_batch_trains_with_the_batch_lowered_and_says_so() {
    // 3 images × 2 views = 6 views, fewer than the default batch of 64 (no --batch, no recipe):
    // the run takes batch 6, one step per epoch. An explicit --batch 8 is still refused.
    let world = World::new(3, 2);
    let images = world.images.to_str().unwrap();
    let run = |source: &[&str], extra: &[&str], out: &str| {
        let out = world.dir.path().join(out);
        let mut args = source.to_vec();
        args.extend_from_slice(STUDENT);
        args.extend_from_slice(&["--epochs", "2", "--warmup-epochs", "0", "--quiet"]);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        (train(&args), out)
    };
    let cache = ["--cache", world.store.to_str().unwrap()];
    let online = [
        "--teacher",
        world.teacher.to_str().unwrap(),
        "--images",
        images,
        "--views",
        "2",
    ];
    for (what, source) in [("cache", &cache[..]), ("online", &online[..])] {
        let (result, out) = run(source, &[], what);
        assert!(result.status.success(), "{what}: {}", stderr(&result));
        let err = stderr(&result);
        assert!(
            err.contains("fewer than one step's 64") && err.contains("training with batch 6"),
            "{what}: {err}"
        );
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert!(
            stdout.starts_with("trained 2 steps (2.00 epochs)"),
            "{what}: {stdout}"
        );
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert!(
            first["loss"].as_f64().is_some_and(f64::is_finite),
            "{what}: {first}"
        );

        let (result, out) = run(source, &["--batch", "8"], &format!("{what}-explicit"));
        assert!(
            !result.status.success(),
            "{what}: an explicit --batch 8 over 6 views"
        );
        let err = stderr(&result);
        assert!(err.contains("lower --batch"), "{what}: {err}");
        assert!(!out.join("metrics.jsonl").exists());
    }
}
