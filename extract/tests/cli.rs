//! The real `extract` binary on real photos with the real DINOv2-S teacher: rows, resumption,
//! sharding (by `--shard` and by launcher variables), bad images, store refusal, inspect/verify
//! and exit codes; resumption, concurrent shards, refusal and verify also on a store in a real
//! S3-compatible server (moto's, `formats/tests/support/s3.rs`), whose `AWS_*` variables the
//! child processes inherit.
//!
//! Expected content keys are computed here from `formats` (blake3 of the teacher file, the
//! photo bytes and the view sampler), independently of the binary.

mod common;
#[path = "../../formats/tests/support/s3.rs"]
mod s3;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tinymim_formats::view::sample_views;
use tinymim_formats::{content_key, Encoding, Hash32, RelationStore, SourceImage, ViewRecipe};

const VIEWS: u32 = 2;
/// 1-based target block of the DINOv2-S config.
const BLOCK: u32 = 12;

/// The variables a launcher (torchrun, Open MPI, Slurm) sets, which choose a run's shard and
/// GPU: cleared in every child, so that a test process itself started under a launcher runs the
/// binary as one process unless a test sets them.
const LAUNCHER_VARIABLES: [&str; 18] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
];

fn extract_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_extract"));
    cmd.stdin(Stdio::null());
    for name in LAUNCHER_VARIABLES {
        cmd.env_remove(name);
    }
    cmd
}

/// `extract --teacher … --config … --images DIR --out STORE --views 2 …` plus `extra`.
fn run_args(images: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--teacher".into(),
        common::dinov2_onnx().display().to_string(),
        "--config".into(),
        common::dinov2_config().display().to_string(),
        "--images".into(),
        images.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--views".into(),
        VIEWS.to_string(),
        "--threads".into(),
        "1".into(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(images: &Path, out: &Path, extra: &[&str]) -> Output {
    extract_cmd()
        .args(run_args(images, out, extra))
        .output()
        .unwrap()
}

/// Runs and expects success; returns the JSON summary.
fn run_ok(images: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run(images, out, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "extract failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

/// A source folder in ImageNet layout with the named cached photos (`class/file`).
fn image_folder(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let name = Path::new(f).file_name().unwrap();
        let dest = dir.path().join(f);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(common::photo(name.to_str().unwrap()), dest).unwrap();
    }
    dir
}

const PHOTOS: [&str; 3] = ["cat/chelsea.png", "cup/coffee.png", "astronaut.png"];

/// The content keys a run over `files` must produce, from formats alone.
fn expected_keys(dir: &Path, files: &[&str], encoding: Encoding) -> HashSet<Hash32> {
    let teacher = Hash32::of_file(&common::dinov2_onnx()).unwrap();
    let recipe = ViewRecipe::default();
    let mut keys = HashSet::new();
    for f in files {
        let (image, hash) = SourceImage::open(&dir.join(f)).unwrap();
        for view in sample_views(&recipe, &hash, image.width(), image.height(), VIEWS) {
            keys.insert(content_key(&teacher, BLOCK, encoding, &hash, &view));
        }
    }
    keys
}

/// Content keys of every committed row, with duplicates kept.
fn stored_keys(store: &Path) -> Vec<Hash32> {
    let reader = RelationStore::open(store).unwrap().reader().unwrap();
    (0..reader.len()).map(|i| reader.row(i).key).collect()
}

#[test]
fn a_new_store_defaults_to_ln1_where_the_teacher_supports_it_else_qkv() {
    let images = image_folder(&PHOTOS[..1]);
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("r.zarr");
    // The DINOv2 config names the ln1 tensor and the qkv weights: ln1.
    run_ok(images.path(), &store, &[]);
    let header = RelationStore::open(&store).unwrap().header().clone();
    assert_eq!(header.encoding, Encoding::Ln1);
    // The same teacher without its qkv weights (a config with no [qkv] table): qkv.
    let config = std::fs::read_to_string(common::dinov2_config()).unwrap();
    let qkv_table = config
        .find("[qkv]")
        .expect("the DINOv2 config has a [qkv] table");
    let without = work.path().join("no-weights.toml");
    std::fs::write(&without, &config[..qkv_table]).unwrap();
    let store = work.path().join("q.zarr");
    let mut args = run_args(images.path(), &store, &[]);
    let at = args.iter().position(|a| a == "--config").unwrap();
    args[at + 1] = without.display().to_string();
    let out = extract_cmd().args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = RelationStore::open(&store).unwrap().header().clone();
    assert_eq!(header.encoding, Encoding::Qkv);
}

fn as_set(keys: &[Hash32]) -> HashSet<Hash32> {
    keys.iter().copied().collect()
}

#[test]
fn a_run_stores_images_times_views_rows_and_a_rerun_writes_none() {
    let images = image_folder(&PHOTOS);
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("r.zarr");
    let summary = run_ok(
        images.path(),
        &store,
        &["--batch", "3", "--encoding", "maps"],
    );
    assert_eq!(summary["views_written"], 6);
    assert_eq!(summary["bad"].as_array().unwrap().len(), 0);
    let keys = stored_keys(&store);
    assert_eq!(keys.len(), 6);
    assert_eq!(
        as_set(&keys),
        expected_keys(images.path(), &PHOTOS, Encoding::Maps)
    );
    let reader = RelationStore::open(&store).unwrap().reader().unwrap();
    let (_, chelsea) = SourceImage::open(&images.path().join("cat/chelsea.png")).unwrap();
    let entry = reader.image(&chelsea).expect("in the image table");
    assert_eq!(
        (entry.path.as_str(), entry.label.as_deref()),
        ("cat/chelsea.png", Some("cat"))
    );
    // Every stored R_QK row is a probability distribution.
    let maps = reader.maps(0).unwrap();
    let sums = maps.sum_axis(ndarray::Axis(3));
    assert!(
        sums.iter().all(|s| (s - 1.0).abs() < 2e-2),
        "row sums {sums:?}"
    );

    // Without --encoding a rerun takes the store's own (maps), not the default for new stores.
    let again = run_ok(images.path(), &store, &[]);
    assert_eq!(again["views_written"], 0);
    assert_eq!(again["views_present"], 6);
    assert_eq!(stored_keys(&store).len(), 6);

    // inspect: text and JSON agree with the store.
    let out = extract_cmd()
        .args(["inspect", store.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 6);
    assert_eq!(report["header"]["encoding"], "maps");
    let out = extract_cmd()
        .args(["inspect", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 in 1 segments"));

    // verify: checksums and keys, then two rows recomputed with the teacher.
    let out = verify_with_teacher(&store, images.path());
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (outcome["rows"].as_u64(), outcome["recomputed"].as_u64()),
        (Some(6), Some(2))
    );

    // A flipped byte inside the targets' shard fails its checksum: verify reports it, exit 1.
    let shard = largest_file(&store.join("segments"));
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&shard, bytes).unwrap();
    let out = extract_cmd()
        .args(["verify", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !outcome["store_problems"].as_array().unwrap().is_empty(),
        "{outcome}"
    );
}

fn largest_file(dir: &Path) -> std::path::PathBuf {
    let mut best = (0, dir.to_path_buf());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let candidate = if path.is_dir() {
            let f = largest_file(&path);
            (std::fs::metadata(&f).map_or(0, |m| m.len()), f)
        } else {
            (std::fs::metadata(&path).unwrap().len(), path)
        };
        if candidate.0 > best.0 {
            best = candidate;
        }
    }
    best.1
}

#[test]
fn an_interrupted_run_resumes_to_exactly_the_rows_of_a_full_run() {
    let work = tempfile::tempdir().unwrap();
    interrupted_run_resumes_to_the_rows_of_a_full_run(&work.path().join("r.zarr"));
}

#[test]
fn a_run_to_object_storage_killed_with_sigkill_resumes_to_the_rows_of_a_full_run() {
    interrupted_run_resumes_to_the_rows_of_a_full_run(&s3::server().fresh_url("resume"));
}

/// A run into `store` killed (SIGKILL) after its first checkpoint, then rerun, holds exactly
/// the rows of an uninterrupted run, none twice.
fn interrupted_run_resumes_to_the_rows_of_a_full_run(store: &Path) {
    let files = [
        "a/chelsea.png",
        "a/coffee.png",
        "b/astronaut.png",
        "b/rocket.jpg",
    ];
    let images = image_folder(&files);
    // One row per shard, a checkpoint after every batch of one view: rows become visible early.
    let args = run_args(
        images.path(),
        store,
        &[
            "--batch",
            "1",
            "--shard-rows",
            "1",
            "--checkpoint-secs",
            "0",
            "--encoding",
            "qkv",
        ],
    );
    let mut child = extract_cmd()
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let committed_at_kill = loop {
        let committed = RelationStore::open(store)
            .and_then(|s| s.committed_keys())
            .map(|k| k.len())
            .unwrap_or(0);
        if committed > 0 {
            child.kill().unwrap();
            break committed;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before any checkpoint"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.wait().unwrap();
    assert!(
        committed_at_kill < 8,
        "killed after {committed_at_kill} of 8 rows"
    );

    let summary = run_ok(images.path(), store, &["--batch", "2", "--encoding", "qkv"]);
    let present = summary["views_present"].as_u64().unwrap();
    assert!(present >= committed_at_kill as u64, "{summary}");
    assert_eq!(
        present + summary["views_written"].as_u64().unwrap(),
        8,
        "{summary}"
    );
    let keys = stored_keys(store);
    assert_eq!(keys.len(), 8, "no row is duplicated");
    assert_eq!(
        as_set(&keys),
        expected_keys(images.path(), &files, Encoding::Qkv)
    );
}

#[test]
fn two_shard_processes_equal_one_unsharded_run() {
    let work = tempfile::tempdir().unwrap();
    two_shard_processes_equal_one_run(&work.path().join("sharded.zarr"));
}

#[test]
fn two_shard_processes_into_one_object_store_equal_one_run_into_a_folder() {
    two_shard_processes_equal_one_run(&s3::server().fresh_url("shards"));
}

/// Both shards of `sharded` written at once, as two machines would, hold the rows (keys and
/// targets, bit for bit) of one unsharded run into a local folder.
fn two_shard_processes_equal_one_run(sharded: &Path) {
    let images = image_folder(&PHOTOS);
    let shard = |s| ["--shard", s, "--encoding", "qkv"];
    let (first, second) = (shard("0/2"), shard("1/2"));
    run_at_once(
        images.path(),
        sharded,
        &[(first.as_slice(), &[]), (second.as_slice(), &[])],
    );
    assert_rows_of_one_run(images.path(), &[sharded]);
}

#[test]
fn launcher_processes_without_shard_equal_one_run() {
    let images = image_folder(&PHOTOS);
    let work = tempfile::tempdir().unwrap();
    let qkv = ["--encoding", "qkv"].as_slice();

    // torchrun --nproc-per-node 2: RANK/WORLD_SIZE choose the parts.
    let torchrun = work.path().join("torchrun.zarr");
    let rank = |r| {
        [
            ("RANK", r),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", r),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29999"),
        ]
    };
    let (rank_0, rank_1) = (rank("0"), rank("1"));
    let logs = run_at_once(
        images.path(),
        &torchrun,
        &[(qkv, rank_0.as_slice()), (qkv, rank_1.as_slice())],
    );
    for (i, log) in logs.iter().enumerate() {
        let line = format!("extract: shard {i}/2 from torchrun (RANK/WORLD_SIZE)");
        assert!(log.contains(&line), "{log}");
    }

    // sbatch --array=5-6: the array task chooses the part.
    let array = work.path().join("array.zarr");
    let task = |id| {
        [
            ("SLURM_ARRAY_TASK_ID", id),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ]
    };
    let (task_5, task_6) = (task("5"), task("6"));
    let logs = run_at_once(
        images.path(),
        &array,
        &[(qkv, task_5.as_slice()), (qkv, task_6.as_slice())],
    );
    for (i, log) in logs.iter().enumerate() {
        let line = format!(
            "extract: shard {i}/2 from Slurm array task {i} of 2 (SLURM_ARRAY_TASK_ID={})",
            5 + i
        );
        assert!(log.contains(&line), "{log}");
    }

    assert_rows_of_one_run(images.path(), &[&torchrun, &array]);
}

/// One process of a sharded run: its arguments after [`run_args`]' and its environment.
type Process<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// Runs `processes` over the [`PHOTOS`] folder `images` into `store` all at once, as many
/// machines would; expects each to succeed and all together to write every view once and to read
/// every source byte once. Returns each process's stderr.
fn run_at_once(images: &Path, store: &Path, processes: &[Process]) -> Vec<String> {
    let children: Vec<_> = processes
        .iter()
        .map(|(extra, env)| {
            extract_cmd()
                .args(run_args(images, store, extra))
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut written = 0;
    let mut read = 0;
    let mut logs = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        let s: serde_json::Value = serde_json::from_str(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        written += s["views_written"].as_u64().unwrap();
        read += s["bytes_read"].as_u64().unwrap();
        assert_eq!(
            s["images_used"].as_u64().unwrap() + s["images_other_shard"].as_u64().unwrap(),
            PHOTOS.len() as u64
        );
        logs.push(log);
    }
    assert_eq!(written, PHOTOS.len() as u64 * VIEWS as u64);
    assert_eq!(
        read,
        bytes_of(images, &PHOTOS),
        "bytes read by all shards together"
    );
    logs
}

/// A rerun skips, without opening it, every file whose path, size and modification time the
/// store recorded with its views: an unchanged file overwritten with garbage of the same size and
/// given back its modification time is not seen; a touched file and a replaced one are read
/// again, the touched one's views found present, the replaced one's extracted.
#[test]
fn a_rerun_skips_unchanged_files_unopened_and_reads_changed_ones() {
    let images = image_folder(&PHOTOS);
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("r.zarr");
    let first = run_ok(images.path(), &store, &[]);
    assert_eq!(first["views_written"], PHOTOS.len() as u64 * VIEWS as u64);
    assert_eq!(first["images_unchanged"], 0);

    let [unchanged, touched, replaced] = PHOTOS.map(|f| images.path().join(f));
    let when = std::fs::metadata(&unchanged).unwrap().modified().unwrap();
    let len = std::fs::metadata(&unchanged).unwrap().len() as usize;
    std::fs::write(&unchanged, vec![0xA5; len]).unwrap();
    let set_modified = |path: &Path, time| {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(time).unwrap();
    };
    set_modified(&unchanged, when);
    let later = std::fs::metadata(&touched).unwrap().modified().unwrap() + Duration::from_secs(5);
    set_modified(&touched, later);
    std::fs::copy(common::photo("motorcycle_left.png"), &replaced).unwrap();

    let again = run_ok(images.path(), &store, &[]);
    assert_eq!(again["bad"], serde_json::json!([]), "{again}");
    assert_eq!(again["images_unchanged"], 1, "{again}");
    assert_eq!(again["images_used"], PHOTOS.len() as u64, "{again}");
    assert_eq!(
        again["bytes_read"],
        bytes_of(images.path(), &PHOTOS[1..]),
        "{again}"
    );
    assert_eq!(again["views_written"], VIEWS as u64, "{again}");
    assert_eq!(again["views_present"], 2 * VIEWS as u64, "{again}");

    // The replaced file's new entry is done in its turn; the touched file, whose rows were all
    // present, was given no new entry and is read again.
    let third = run_ok(images.path(), &store, &[]);
    assert_eq!(third["images_unchanged"], 2, "{third}");
    assert_eq!(third["views_written"], 0, "{third}");
    assert_eq!(
        third["bytes_read"],
        bytes_of(images.path(), &PHOTOS[1..2]),
        "{third}"
    );
}

/// The sizes of `files` under `dir`, summed.
fn bytes_of(dir: &Path, files: &[&str]) -> u64 {
    files
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
        .sum()
}

/// A shard opens only its own files: every file of the other shard (by blake3 of its relative
/// path, the rule `tinymim_formats::shard` documents, computed here with the blake3 crate) is
/// replaced by bytes no decoder accepts, and the run reports none of them bad, counts them as
/// another shard's and reads exactly its own files' bytes.
#[test]
fn a_shard_reads_only_its_own_files() {
    let names: Vec<String> = (0..4)
        .flat_map(|i| PHOTOS.iter().map(move |p| format!("copy{i}/{p}")))
        .collect();
    let files: Vec<&str> = names.iter().map(String::as_str).collect();
    let images = image_folder(&files);
    let part = |path: &str| {
        let digest = blake3::hash(path.as_bytes());
        u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap()) % 2
    };
    let (mine, others): (Vec<&str>, Vec<&str>) = files.iter().partition(|f| part(f) == 0);
    assert!(
        !mine.is_empty() && !others.is_empty(),
        "{mine:?} {others:?}"
    );
    for (i, f) in others.iter().enumerate() {
        std::fs::write(images.path().join(f), format!("not an image {i}")).unwrap();
    }
    let store = tempfile::tempdir().unwrap();
    let s = run_ok(
        images.path(),
        &store.path().join("r.zarr"),
        &["--shard", "0/2"],
    );
    assert_eq!(s["bad"], serde_json::json!([]), "{s}");
    assert_eq!(s["images_found"], files.len() as u64);
    assert_eq!(s["images_other_shard"], others.len() as u64);
    assert_eq!(s["bytes_read"], bytes_of(images.path(), &mine));
}

/// Each of the `sharded` stores holds the rows (keys and targets, bit for bit) of one
/// unsharded `qkv` run over the [`PHOTOS`] folder `images` into a local folder.
fn assert_rows_of_one_run(images: &Path, sharded: &[&Path]) {
    let work = tempfile::tempdir().unwrap();
    let whole = work.path().join("whole.zarr");
    run_ok(images, &whole, &["--encoding", "qkv"]);
    let (keys, targets) = (stored_keys(&whole), targets_by_key(&whole));
    assert_eq!(keys.len(), PHOTOS.len() * VIEWS as usize);
    for store in sharded {
        let store_keys = stored_keys(store);
        assert_eq!(store_keys.len(), keys.len(), "{}", store.display());
        assert_eq!(as_set(&store_keys), as_set(&keys), "{}", store.display());
        assert_eq!(targets_by_key(store), targets, "{}", store.display());
    }
}

/// Every committed row's targets (as f32 bit patterns) by content key.
fn targets_by_key(store: &Path) -> std::collections::BTreeMap<String, Vec<u32>> {
    let store = RelationStore::open(store).unwrap();
    let dim = store.header().geometry.dim as usize;
    let reader = store.reader().unwrap();
    (0..reader.len())
        .map(|i| {
            let values = reader.targets(i).unwrap().to_f32(dim);
            let bits = values.iter().map(|v| v.to_bits()).collect();
            (reader.row(i).key.to_hex(), bits)
        })
        .collect()
}

#[test]
fn a_store_on_object_storage_is_refused_inspected_and_verified_like_a_folder() {
    let server = s3::server();
    let images = image_folder(&PHOTOS[..2]);
    let store = server.fresh_url("verify");
    let summary = run_ok(images.path(), &store, &["--encoding", "ln1"]);
    assert_eq!(summary["views_written"], 4);
    assert!(
        summary["bytes_per_view"].as_f64().unwrap() > 1000.0,
        "{summary}"
    );

    // Another encoding is refused, naming both and the store's URL.
    let out = run(images.path(), &store, &["--encoding", "maps"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ln1") && err.contains("maps"), "{err}");
    assert!(err.contains(store.to_str().unwrap()), "{err}");

    let out = extract_cmd()
        .args(["inspect", store.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 4);
    let out = verify_with_teacher(&store, images.path());
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["rows"].as_u64(), Some(4));

    // A flipped byte in the middle of the largest object of the segments (the targets'
    // shard): verify reports it, exit 1.
    let url = store.to_str().unwrap();
    let prefix = url.strip_prefix(&format!("s3://{}/", s3::BUCKET)).unwrap();
    let prefix = format!("{prefix}/segments/");
    server.boto3(&format!(
        "objects = s3.list_objects_v2(Bucket={bucket:?}, Prefix={prefix:?})['Contents']\n\
         key = max(objects, key=lambda o: o['Size'])['Key']\n\
         body = bytearray(s3.get_object(Bucket={bucket:?}, Key=key)['Body'].read())\n\
         body[len(body) // 2] ^= 0x55\n\
         s3.put_object(Bucket={bucket:?}, Key=key, Body=bytes(body))",
        bucket = s3::BUCKET
    ));
    let out = extract_cmd()
        .args(["verify", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        !outcome["store_problems"].as_array().unwrap().is_empty(),
        "{outcome}"
    );
}

#[test]
fn corrupt_and_empty_images_are_reported_and_skipped() {
    let images = image_folder(&["cat/chelsea.png"]);
    std::fs::write(
        images.path().join("cat/broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
    std::fs::write(images.path().join("empty.png"), b"").unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("r.zarr");
    // Also: with no ORT_DYLIB_PATH and an empty TINYMIM_CACHE, the library is still found in
    // the workspace's own cache.
    let empty_cache = tempfile::tempdir().unwrap();
    let out = extract_cmd()
        .args(run_args(images.path(), &store, &["--encoding", "qkv"]))
        .env_remove("ORT_DYLIB_PATH")
        .env("TINYMIM_CACHE", empty_cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: Vec<String> = summary["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(bad, ["cat/broken.jpg", "empty.png"]);
    assert!(
        summary["bad"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("empty"),
        "{summary}"
    );
    assert_eq!(summary["views_written"], 2);
    assert_eq!(stored_keys(&store).len(), 2);
    // The segment's summary attribute lists them too.
    let segments = RelationStore::open(&store).unwrap().segments().unwrap();
    assert_eq!(segments[0].summary["bad"].as_array().unwrap().len(), 2);
}

#[test]
fn a_store_of_another_encoding_or_teacher_is_refused_naming_both() {
    let images = image_folder(&["cat/chelsea.png"]);
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("r.zarr");
    run_ok(images.path(), &store, &["--encoding", "qkv"]);

    let out = run(images.path(), &store, &["--encoding", "maps"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qkv") && err.contains("maps"), "{err}");
    assert!(err.contains(store.to_str().unwrap()), "{err}");

    // The same model with one more protobuf field (doc_string = "x") appended: a valid ONNX
    // file, hence a different teacher fingerprint.
    let other = work.path().join("other.onnx");
    let mut bytes = std::fs::read(common::dinov2_onnx()).unwrap();
    bytes.extend_from_slice(&[0x32, 0x01, b'x']);
    std::fs::write(&other, &bytes).unwrap();
    let (ours, theirs) = (
        Hash32::of_bytes(&bytes),
        Hash32::of_file(&common::dinov2_onnx()).unwrap(),
    );
    let mut args = run_args(images.path(), &store, &["--encoding", "qkv"]);
    args[1] = other.display().to_string();
    let out = extract_cmd().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&ours.to_hex()) && err.contains(&theirs.to_hex()),
        "{err}"
    );
    assert_eq!(stored_keys(&store).len(), 2);
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1_with_one_sentence() {
    let images = image_folder(&[]);
    let store = images.path().join("r.zarr");
    let code = |args: Vec<String>| extract_cmd().args(args).output().unwrap().status.code();
    let with = |extra: &[&str]| run_args(images.path(), &store, extra);
    assert_eq!(code(with(&["--shard", "2/2"])), Some(2));
    assert_eq!(code(with(&["--encoding", "pixels"])), Some(2));
    assert_eq!(code(with(&["--views", "0"])), Some(2));
    assert_eq!(code(vec!["--images".into(), "x".into()]), Some(2));

    let out = extract_cmd()
        .args(with(&[]))
        .env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("/nowhere/libonnxruntime.so"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // No GPU here: with the CPU build of ONNX Runtime (the test command's) the provider is
    // missing; with the GPU build in the cache (`scripts/setup.sh --ort-gpu`) the GPU is.
    let out = extract_cmd()
        .args(with(&["--device", "cuda"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device cuda")
            && (err.contains("CUDA execution provider")
                || err.contains("no NVIDIA GPU is visible")),
        "{err}"
    );

    // Launcher variables that describe no process: refused, naming them, before any work.
    let out = extract_cmd()
        .args(with(&[]))
        .envs([("RANK", "3"), ("WORLD_SIZE", "2")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RANK=3 is not below WORLD_SIZE=2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut args = with(&[]);
    args[1] = "/nowhere/teacher.onnx".into();
    let out = extract_cmd().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nowhere/teacher.onnx"));
}

#[test]
fn a_given_shard_wins_over_the_launcher_with_a_note() {
    let images = image_folder(&PHOTOS[..1]);
    let store = images.path().join("r.zarr");
    let out = extract_cmd()
        .args(run_args(images.path(), &store, &["--shard", "0/1"]))
        .envs([
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_ID", "77"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("extract: --shard 0/1 overrides the launcher's part 1/2 (Slurm"),
        "{err}"
    );
    // Part 0/1 is every image: both views of the one photo.
    assert_eq!(stored_keys(&store).len(), VIEWS as usize);
}

#[test]
fn help_names_every_option_and_subcommand() {
    let out = extract_cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--teacher",
        "--config",
        "--images",
        "--views",
        "--encoding",
        "--shard",
        "--device",
        "inspect",
        "verify",
        "maps",
        "qkv",
        "ln1",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

#[test]
fn an_ln1_store_holds_the_qkv_weights_and_its_rows_recompute() {
    let images = image_folder(&["cat/chelsea.png"]);
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("r.zarr");
    let summary = run_ok(images.path(), &store, &["--encoding", "ln1"]);
    assert_eq!(summary["views_written"], 2);
    let opened = RelationStore::open(&store).unwrap();
    let params = opened
        .qkv_params()
        .unwrap()
        .expect("ln1 stores keep the qkv projection");
    assert_eq!(
        (params.weight.len(), params.bias.len()),
        (3 * 384 * 384, 3 * 384)
    );
    // Decoded rows are relation maps: every row of R_VV sums to one.
    let maps = opened.reader().unwrap().maps(1).unwrap();
    assert_eq!(maps.shape(), &[2, 6, 257, 257]);
    let sums = maps.sum_axis(ndarray::Axis(3));
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-3));
    verify_with_teacher(&store, images.path());
}

/// `extract verify` with the DINOv2-S teacher recomputing two sampled rows: it must succeed.
fn verify_with_teacher(store: &Path, images: &Path) -> Output {
    let out = extract_cmd()
        .args([
            "verify",
            store.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ])
        .args(["--teacher", common::dinov2_onnx().to_str().unwrap()])
        .args([
            "--config",
            common::dinov2_config().to_str().unwrap(),
            "--sample",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
