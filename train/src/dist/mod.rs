//! Data parallelism: one process per device, every process training the same student on its
//! own part of each global micro-batch, gradients summed across processes before the update.
//!
//! The world comes from the launcher ([`tinymim_formats::launch`]: torchrun's `RANK`/
//! `WORLD_SIZE`/`LOCAL_RANK`/`MASTER_ADDR`/`MASTER_PORT`, Slurm's `SLURM_PROCID`/`SLURM_NTASKS`,
//! Open MPI's `mpirun`). The sum is an established collective in every build:
//!
//! - **NCCL** on CUDA devices (feature `nccl`), through cudarc: rank 0 creates the NCCL unique
//!   id and hands it to the others over TCP at `MASTER_ADDR:MASTER_PORT` ([`rendezvous`]);
//! - **MPI** on the CPU (feature `mpi`), through the `mpi` crate over the system's Open MPI:
//!   processes started by `mpirun` (or `srun --mpi=pmix`) find each other through it.
//!
//! What makes a W-process run the 1-process run (DESIGN: "same mathematics"): the data order,
//! jitter and drop-path draws are functions of the global step and the seed; each process
//! takes its [`Part`] of every global micro-batch (rows and drop-path coins alike); the loss
//! of a part is weighted by its share of the global micro-batch, so the sum over processes is
//! the global mean; gradients are summed in a few flat buckets ([`buckets`]); clipping and
//! AdamW then see the global gradient on every process. Every collective runs under a
//! [`watchdog`], so a dead or stalled peer ends the job with a message instead of a hang.

pub mod buckets;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod rendezvous;
pub mod watchdog;

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use candle_core::{Device, Tensor};
use tinymim_formats::launch::{Launch, Launcher};

use watchdog::Watchdog;

/// How long a collective (or the start-up rendezvous) may take before the job is ended:
/// PyTorch's default NCCL timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Exit status of a process that ended the job because a collective timed out.
pub const TIMEOUT_EXIT: i32 = 3;

/// Process `index` of `count`: which rows of each global micro-batch it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// This process, `0 ≤ index < count`.
    pub index: usize,
    /// Processes in the world.
    pub count: usize,
}

impl Part {
    /// The whole batch (one process).
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// The positions of this part in a global micro-batch of `global` samples: contiguous
    /// and as even as possible (⌊global·i/n⌋ to ⌊global·(i+1)/n⌋), the parts tiling it.
    pub fn range(&self, global: usize) -> Range<usize> {
        global * self.index / self.count..global * (self.index + 1) / self.count
    }
}

/// Why the world could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher asked for several processes in a way this build cannot serve.
    #[error("{0}")]
    Unsupported(String),
    /// The processes could not find each other.
    #[error("{0}")]
    Rendezvous(String),
    /// The collective library failed.
    #[error("{library}: {message}")]
    Library {
        /// NCCL or MPI.
        library: &'static str,
        /// What it said.
        message: String,
    },
}

/// A sum over every process of the world.
pub trait Collective {
    /// The library, for messages: `NCCL`, `MPI`.
    fn name(&self) -> &'static str;
    /// This process's rank and the world's size, as the library counts them.
    fn place(&self) -> (usize, usize);
    /// Replaces `bucket`, a contiguous f32 tensor this process owns, by its sum over every
    /// process (each passes a bucket of the same length, in the same order).
    fn all_reduce_sum(&self, bucket: &Tensor) -> candle_core::Result<()>;
}

/// This process's place in the world and the collective that joins it to the others.
pub struct World {
    rank: usize,
    size: usize,
    launcher: Launcher,
    collective: Option<Box<dyn Collective>>,
    watchdog: Option<Watchdog>,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("collective", &self.collective.as_ref().map(|c| c.name()))
            .finish()
    }
}

impl World {
    /// One process: no collective, nothing summed.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            launcher: Launcher::Single,
            collective: None,
            watchdog: None,
        }
    }

    /// Joins the world `launch` describes, training on `device`: NCCL for a CUDA device, MPI
    /// for the CPU. Start-up and every later collective may take `timeout` at most.
    pub fn join(launch: &Launch, device: &Device, timeout: Duration) -> Result<World, DistError> {
        if !launch.is_distributed() {
            return Ok(World::single());
        }
        // NCCL's and MPI's initialisation wait for the whole world: the collectives arm the
        // watchdog around it, under the same deadline as every later collective.
        let watchdog = Watchdog::start(launch.rank, timeout);
        let collective: Box<dyn Collective> = if device.is_cuda() {
            nccl_collective(launch, device, timeout, &watchdog)?
        } else {
            mpi_collective(launch, &watchdog)?
        };
        let (rank, size) = collective.place();
        Ok(World {
            rank,
            size,
            launcher: launch.launcher,
            collective: Some(collective),
            watchdog: Some(watchdog),
        })
    }

    /// This process's rank, `0 ≤ rank < size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the world.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this process writes the run's files (metrics, checkpoints, export): rank 0.
    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }

    /// This process's part of every global micro-batch.
    pub fn part(&self) -> Part {
        Part {
            index: self.rank,
            count: self.size,
        }
    }

    /// One line for the log: `one process` or `rank 1 of 2 (MPI, mpirun (OMPI_COMM_WORLD_*))`.
    pub fn describe(&self) -> String {
        match &self.collective {
            None => "one process".to_string(),
            Some(c) => format!(
                "rank {} of {} ({}, {})",
                self.rank,
                self.size,
                c.name(),
                self.launcher
            ),
        }
    }

    /// Sums `bucket` in place over every process (nothing to do for one process), under the
    /// watchdog: `what` names the collective in the message of a timeout.
    pub fn all_reduce_sum(&self, bucket: &Tensor, what: &str) -> candle_core::Result<()> {
        let Some(collective) = &self.collective else {
            return Ok(());
        };
        let _armed = self.watchdog.as_ref().map(|w| w.arm(what));
        collective.all_reduce_sum(bucket)?;
        // The sum is queued on the device's stream; wait for it here, under the watchdog,
        // so that a peer that never joins is caught at this collective, not at the next read.
        bucket.device().synchronize()
    }

    /// Returns once every process has called it (a one-element sum), under the watchdog.
    pub fn barrier(&self, device: &Device, what: &str) -> candle_core::Result<()> {
        if self.collective.is_none() {
            return Ok(());
        }
        let token = Tensor::ones(1, candle_core::DType::F32, device)?;
        self.all_reduce_sum(&token, what)
    }
}

#[cfg(feature = "nccl")]
fn nccl_collective(
    launch: &Launch,
    device: &Device,
    timeout: Duration,
    watchdog: &Watchdog,
) -> Result<Box<dyn Collective>, DistError> {
    Ok(Box::new(nccl::Nccl::join(
        launch, device, timeout, watchdog,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_collective(
    launch: &Launch,
    _device: &Device,
    _timeout: Duration,
    _watchdog: &Watchdog,
) -> Result<Box<dyn Collective>, DistError> {
    Err(DistError::Unsupported(format!(
        "{} asks for {} processes on CUDA devices, but this binary was built without NCCL; \
         build the GPU binaries with scripts/build-cuda.sh (features cuda,nccl)",
        launch.launcher, launch.world_size
    )))
}

#[cfg(feature = "mpi")]
fn mpi_collective(launch: &Launch, watchdog: &Watchdog) -> Result<Box<dyn Collective>, DistError> {
    Ok(Box::new(mpi::Mpi::join(launch, watchdog)?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_collective(launch: &Launch, _watchdog: &Watchdog) -> Result<Box<dyn Collective>, DistError> {
    Err(DistError::Unsupported(format!(
        "{} asks for {} processes on the CPU, but this binary was built without MPI, which \
         CPU data parallelism runs over; build with `cargo build --release -p tinymim-train \
         --features mpi` (needs Open MPI: scripts/setup.sh --mpi) and launch with mpirun",
        launch.launcher, launch.world_size
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_batch_evenly_in_rank_order() {
        for global in [1usize, 7, 8, 64, 65] {
            for count in 1..=global.min(9) {
                let ranges: Vec<_> = (0..count)
                    .map(|index| Part { index, count }.range(global))
                    .collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[count - 1].end, global);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start, "{ranges:?}");
                }
                let (min, max) = ranges
                    .iter()
                    .map(|r| r.len())
                    .fold((usize::MAX, 0), |a, l| (a.0.min(l), a.1.max(l)));
                assert!(min >= 1 && max - min <= 1, "{global}/{count}: {ranges:?}");
            }
        }
        assert_eq!(Part::WHOLE.range(5), 0..5);
    }

    #[test]
    fn one_process_sums_nothing() {
        let world = World::single();
        let bucket = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        world.all_reduce_sum(&bucket, "test").unwrap();
        assert_eq!(bucket.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert!(world.is_lead());
        assert_eq!(world.part(), Part::WHOLE);
        assert_eq!(world.describe(), "one process");
    }
}
