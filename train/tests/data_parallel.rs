//! Data-parallel training over MPI: `mpirun -n 2 train …` is the one-process run (losses and
//! weights, within floating-point summation order), resumes at another world size, and a dead
//! or stalled rank ends the whole job with a message instead of a hang. Needs the `mpi`
//! feature and Open MPI's `mpirun` (scripts/setup.sh --mpi; the test script builds with it).
#![cfg(feature = "mpi")]

mod loop_fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use loop_fixture::World;

/// The same run at every world size: a 1/2 split of each 3-view micro-batch (uneven on
/// purpose), two micro-batches per step, drop path and jitter on.
fn run_args(store: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cache",
        store.to_str().unwrap(),
        "--student",
        "vit-tiny",
        "--dim",
        "24",
        "--depth",
        "3",
        "--heads",
        "3",
        "--patch",
        "8",
        "--image-size",
        "32",
        "--drop-path",
        "0.2",
        "--batch",
        "3",
        "--accum",
        "2",
        "--epochs",
        "2",
        "--warmup-epochs",
        "0",
        "--base-lr",
        "0.05",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `train` as one process.
fn single(args: &[String]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .expect("the train binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mpirun -n ranks train …`, started (shared memory between the ranks of this machine).
fn mpirun(ranks: usize, args: &[String]) -> Child {
    Command::new("mpirun")
        .args([
            "-n",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args(["--mca", "btl", "self,vader"])
        .args(["--mca", "btl_vader_single_copy_mechanism", "none"])
        .arg(env!("CARGO_BIN_EXE_train"))
        .args(args)
        // CI runs as root; Open MPI refuses that unless told twice.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun runs (Open MPI: scripts/setup.sh --mpi)")
}

/// The child's output, or a failed test if it has not ended within `limit` (killed first).
fn finish_within(mut child: Child, limit: Duration) -> Output {
    let began = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if began.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the job hung for {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Per-step (loss, grad_norm) of a run's metrics log.
fn steps(run: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                r["loss"].as_f64().unwrap(),
                r["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The exported weights by name, as f32.
fn weights(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(run.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

/// The elements of `name`'s tensor that the comparison covers: all, except the key third of
/// an attention's qkv bias. A key bias shifts every logit of a query's softmax by the same
/// amount, so its gradient is zero in exact arithmetic; what the float sums leave of it is
/// noise of ~1e-9, which AdamW (g/√v) turns into full ±lr steps of either sign, in any
/// implementation: those weights are noise by construction and differ between any two
/// summation orders.
fn compared(name: &str, len: usize) -> Vec<std::ops::Range<usize>> {
    if name.ends_with(".attn.qkv.bias") {
        vec![0..len / 3, 2 * len / 3..len]
    } else {
        std::iter::once(0..len).collect()
    }
}

/// The largest |a − b| over every compared weight ([`compared`]), relative to the largest |b|
/// of its tensor.
fn weight_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            let scale = y.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
            compared(name, y.len())
                .into_iter()
                .flat_map(|range| x[range.clone()].iter().zip(&y[range]))
                .map(|(p, q)| (*p as f64 - *q as f64).abs() / scale)
                .fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}

/// Asserts two runs' per-step losses and gradient norms agree to `tolerance` relative, and
/// their weights too; returns the largest relative differences seen (loss, weights).
fn assert_same_run(a: &Path, b: &Path, tolerance: f64) -> (f64, f64) {
    let (sa, sb) = (steps(a), steps(b));
    assert_eq!(sa.len(), sb.len());
    let mut loss_diff: f64 = 0.0;
    for (step, ((la, ga), (lb, gb))) in sa.iter().zip(&sb).enumerate() {
        let dl = (la - lb).abs() / lb.abs();
        let dg = (ga - gb).abs() / gb.abs();
        assert!(
            dl < tolerance && dg < tolerance,
            "step {}: loss {la} vs {lb}, grad norm {ga} vs {gb}",
            step + 1
        );
        loss_diff = loss_diff.max(dl);
    }
    let dw = weight_difference(a, b);
    assert!(dw < tolerance, "weights differ by {dw:e} relative");
    (loss_diff, dw)
}

/// Reduction order only: float32 sums of the same terms in another grouping.
const TOLERANCE: f64 = 1e-4;

#[test]
fn two_mpi_ranks_train_the_one_process_run_and_resume_at_another_world_size() {
    let world = World::new(6, 2);
    let dir = world.dir.path();
    let (one, two, resumed) = (dir.join("one"), dir.join("two"), dir.join("resumed"));
    single(&run_args(&world.store, &one, &[]));

    let job = finish_within(
        mpirun(2, &run_args(&world.store, &two, &[])),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&job.stderr);
    assert!(job.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&job.stdout);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("trained 4 steps"))
            .count(),
        1,
        "rank 0 alone prints the summary: {stdout}"
    );
    let (dl, dw) = assert_same_run(&two, &one, TOLERANCE);
    eprintln!("2 ranks vs 1 process: losses within {dl:.1e}, weights within {dw:.1e} relative");
    // The tolerance tells runs apart: another drop-path stream (seed) is far outside it.
    let other = dir.join("other");
    single(&run_args(&world.store, &other, &["--seed", "9"]));
    assert!(weight_difference(&other, &one) > 100.0 * TOLERANCE);

    // Half the run on two ranks, the rest in one process from its checkpoint.
    let half = finish_within(
        mpirun(2, &run_args(&world.store, &resumed, &["--max-steps", "2"])),
        Duration::from_secs(300),
    );
    assert!(
        half.status.success(),
        "{}",
        String::from_utf8_lossy(&half.stderr)
    );
    assert_eq!(steps(&resumed).len(), 2);
    single(&run_args(&world.store, &resumed, &["--resume"]));
    assert_same_run(&resumed, &one, TOLERANCE);
}

/// The pid of rank `rank` of the job writing into `out` (found by its command line and the
/// rank mpirun gave it).
fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
    let marker = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let mine = String::from_utf8_lossy(&cmdline).contains(out.to_str()?)
                && environ.split(|&b| b == 0).any(|v| v == marker.as_bytes());
            mine.then_some(pid)
        })
}

/// Starts a long two-rank job, waits for its first step, does `signal` to rank 1 and returns
/// the job's output (which must come within a minute).
fn job_with_rank_one(signal: i32, timeout_s: &str) -> Output {
    let world = World::new(6, 2);
    let out = world.dir.path().join("run");
    let args = run_args(
        &world.store,
        &out,
        &["--epochs", "400", "--collective-timeout", timeout_s],
    );
    let job = mpirun(2, &args);
    let began = Instant::now();
    let pid = loop {
        let started =
            std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|m| !m.is_empty());
        if let (true, Some(pid)) = (started, rank_pid(&out, 1)) {
            break pid;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: kill(2) on a pid this test found as its own job's rank 1.
    unsafe { libc::kill(pid as i32, signal) };
    let output = finish_within(job, Duration::from_secs(60));
    // SAFETY: as above; the process may already be gone.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    output
}

#[test]
fn a_killed_rank_fails_the_whole_job() {
    let out = job_with_rank_one(libc::SIGKILL, "600");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("signal 9"),
        "mpirun names the death: {stderr}"
    );
}

#[test]
fn a_stalled_rank_ends_the_job_at_the_collective_timeout_with_a_message() {
    let out = job_with_rank_one(libc::SIGSTOP, "3");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: rank 0: the gradient sum of step")
            && stderr.contains("did not complete within 3 s"),
        "{stderr}"
    );
}

#[test]
fn launcher_variables_mpi_cannot_serve_are_refused_with_a_sentence() {
    let world = World::new(2, 1);
    let out = world.dir.path().join("run");
    let refused = |env: &[(&str, &str)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(run_args(
                &world.store,
                &out,
                &["--collective-timeout", "60"],
            ))
            .envs(env.iter().copied())
            .output()
            .expect("the train binary runs");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // torchrun's variables on the CPU: MPI, started without mpirun, sees one process.
    let err = refused(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29517"),
    ]);
    assert!(
        err.contains("rank 1 of 2") && err.contains("mpirun -n 2"),
        "{err}"
    );
    // A rank outside its world: named, before any work.
    let err = refused(&[("RANK", "2"), ("WORLD_SIZE", "2")]);
    assert!(err.contains("RANK=2 is not below WORLD_SIZE=2"), "{err}");
    assert!(!out.join("metrics.jsonl").exists());
}
