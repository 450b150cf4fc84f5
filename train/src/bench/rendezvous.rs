//! `train bench rendezvous`: the start-up hand-off of a multi-process job
//! ([`crate::dist::rendezvous`]) under a real launcher, without a GPU: rank 0 makes a 128-byte
//! payload (as it makes NCCL's unique id), every rank receives it through the master the
//! launcher names (torchrun's store, or rank 0's own listener), and each reports its rank and
//! the payload's blake3; the ranks agree when every report shows the same digest.
//!
//! ```text
//! torchrun --standalone --nproc-per-node 4 --no-python train bench rendezvous [--timeout SECS]
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tinymim_formats::launch::Launch;

use crate::dist::rendezvous::hand_off;
use crate::run::{Result, RunError};

/// One rank's report: one JSON line of `train bench rendezvous`.
#[derive(Clone, Debug, Serialize)]
pub struct RendezvousReport {
    /// Always `rendezvous`.
    pub check: &'static str,
    /// The launcher that started the process.
    pub launcher: String,
    /// This process's rank.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Whether the payload went through torchrun's agent store.
    pub via_torch_store: bool,
    /// Bytes received.
    pub bytes: usize,
    /// blake3 of the payload received.
    pub payload_blake3: String,
}

/// Joins the job the environment describes and hands rank 0's payload to every rank.
pub fn hand_off_check(timeout: Duration) -> Result<RendezvousReport> {
    let launch = Launch::from_env().map_err(|e| RunError::Setup(e.to_string()))?;
    if !launch.is_distributed() {
        return Err(RunError::Setup(
            "one process: start it under torchrun, srun or with RANK/WORLD_SIZE set".into(),
        ));
    }
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
    let received = hand_off(&launch, &env, payload.as_deref(), timeout)
        .map_err(|e| RunError::Setup(e.to_string()))?;
    Ok(RendezvousReport {
        check: "rendezvous",
        launcher: launch.launcher.to_string(),
        rank: launch.rank,
        world_size: launch.world_size,
        via_torch_store: env("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
        bytes: received.len(),
        payload_blake3: blake3::hash(&received).to_hex().to_string(),
    })
}
