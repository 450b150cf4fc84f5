//! Checks the start-up hand-off of a multi-GPU job (`dist::rendezvous`) under a real launcher,
//! without a GPU: rank 0 makes a 128-byte payload (as it makes NCCL's unique id), every rank
//! receives it through the master the launcher names (torchrun's store, or rank 0's own
//! listener), and each prints one JSON line with its rank and the payload's blake3; the ranks
//! agree when every line shows the same digest. scripts/gpu_check.sh runs it under torchrun on
//! the GPU machine, whose PyTorch serves the store.
//!
//! ```text
//! torchrun --standalone --nproc-per-node 4 --no-python rendezvous_check [--timeout SECS]
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tinymim_formats::launch::Launch;
use tinymim_train::dist::rendezvous::hand_off;

fn main() {
    let timeout = std::env::args()
        .skip_while(|a| a != "--timeout")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let launch = match Launch::from_env() {
        Ok(launch) if launch.is_distributed() => launch,
        Ok(_) => fail("one process: start it under torchrun, srun or with RANK/WORLD_SIZE set"),
        Err(e) => fail(&e.to_string()),
    };
    let payload = (launch.rank == 0).then(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seed = format!("{} {}", std::process::id(), now.as_nanos());
        let mut id = vec![0u8; 128];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .finalize_xof()
            .fill(&mut id);
        id
    });
    let env = |name: &str| std::env::var(name).ok();
    match hand_off(&launch, &env, payload.as_deref(), timeout) {
        Ok(received) => println!(
            "{}",
            serde_json::json!({
                "check": "rendezvous",
                "launcher": launch.launcher.to_string(),
                "rank": launch.rank,
                "world_size": launch.world_size,
                "via_torch_store": env("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
                "bytes": received.len(),
                "payload_blake3": blake3::hash(&received).to_hex().to_string(),
            })
        ),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
