//! The CPU collective: MPI through the `mpi` crate over the system's Open MPI. Processes are
//! started by `mpirun -n W train …` (or `srun --mpi=pmix`); MPI's own world must be the one
//! the launcher variables describe.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::traits::{Communicator, CommunicatorCollectives};
use tinymim_formats::launch::Launch;

use super::watchdog::Watchdog;
use super::{Collective, DistError};

/// An initialised MPI environment (finalised when dropped).
pub struct Mpi {
    universe: Universe,
}

impl Mpi {
    /// Initialises MPI (under `watchdog`: it waits for the whole world) and checks that its
    /// world is the launcher's.
    pub fn join(launch: &Launch, watchdog: &Watchdog) -> Result<Mpi, DistError> {
        let armed = watchdog.arm("MPI's start-up (every rank joins)");
        // Only the main thread calls MPI; loader and watchdog threads never do.
        let (universe, _) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
                DistError::Library {
                    library: "MPI",
                    message: "MPI was already initialised in this process".to_string(),
                }
            })?;
        drop(armed);
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if (rank, size) != (launch.rank, launch.world_size) {
            return Err(DistError::Unsupported(format!(
                "{} describes rank {} of {}, but MPI sees rank {rank} of {size}: CPU processes \
                 find each other through MPI, so start them with `mpirun -n {}` (or `srun \
                 --mpi=pmix`), not torchrun",
                launch.launcher, launch.rank, launch.world_size, launch.world_size
            )));
        }
        Ok(Mpi { universe })
    }
}

impl Collective for Mpi {
    fn name(&self) -> &'static str {
        "MPI"
    }

    fn place(&self) -> (usize, usize) {
        let world = self.universe.world();
        (world.rank() as usize, world.size() as usize)
    }

    fn all_reduce_sum(&self, bucket: &Tensor) -> candle_core::Result<()> {
        bucket.inplace_op1(&SumOp(self))
    }
}

/// The in-place sum of a CPU tensor's storage.
struct SumOp<'a>(&'a Mpi);

impl InplaceOp1 for SumOp<'_> {
    fn name(&self) -> &'static str {
        "mpi-all-reduce-sum"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("the MPI sum takes f32 buckets");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the MPI sum takes contiguous buckets");
        };
        let values = &mut values[start..end];
        let mine = values.to_vec();
        self.0
            .universe
            .world()
            .all_reduce_into(&mine[..], values, SystemOperation::sum());
        Ok(())
    }
}
