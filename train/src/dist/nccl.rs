//! The GPU collective: NCCL through cudarc (candle's `nccl` feature). Rank 0 creates the
//! NCCL unique id and hands it to the others over TCP at `MASTER_ADDR:MASTER_PORT` (torchrun's
//! store there, or rank 0's own listener: [`super::rendezvous`]); each process then joins the
//! communicator on its own device.

use std::time::Duration;

use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, Device, InplaceOp1, Layout, Tensor};
use tinymim_formats::launch::Launch;

use super::watchdog::Watchdog;
use super::{rendezvous, Collective, DistError};

/// A NCCL communicator of the job.
pub struct Nccl {
    comm: Comm,
}

impl Nccl {
    /// Exchanges the unique id through rank 0 (within `timeout`) and joins the communicator on
    /// `device` (under `watchdog`: NCCL waits for every rank there).
    pub fn join(
        launch: &Launch,
        device: &Device,
        timeout: Duration,
        watchdog: &Watchdog,
    ) -> Result<Nccl, DistError> {
        let library = |e: &dyn std::fmt::Debug| DistError::Library {
            library: "NCCL",
            message: format!("{e:?}"),
        };
        let env = |name: &str| std::env::var(name).ok();
        let id = if launch.rank == 0 {
            let id = Id::new().map_err(|e| library(&e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            rendezvous::hand_off(launch, &env, Some(&bytes), timeout)?;
            id
        } else {
            let bytes = rendezvous::hand_off(launch, &env, None, timeout)?;
            let internal: [std::ffi::c_char; 128] = bytes
                .iter()
                .map(|&b| b as std::ffi::c_char)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| {
                    DistError::Rendezvous(format!(
                        "rank {}: rank 0 sent {} bytes, not a 128-byte NCCL id",
                        launch.rank,
                        bytes.len()
                    ))
                })?;
            Id::uninit(internal)
        };
        let stream = device
            .as_cuda_device()
            .map_err(|e| library(&e))?
            .cuda_stream();
        let _armed = watchdog.arm("joining the NCCL communicator at start-up");
        let comm =
            Comm::from_rank(stream, launch.rank, launch.world_size, id).map_err(|e| library(&e))?;
        Ok(Nccl { comm })
    }
}

impl Collective for Nccl {
    fn name(&self) -> &'static str {
        "NCCL"
    }

    fn place(&self) -> (usize, usize) {
        (self.comm.rank(), self.comm.world_size())
    }

    fn all_reduce_sum(&self, bucket: &Tensor) -> candle_core::Result<()> {
        bucket.inplace_op1(&SumOp(&self.comm))
    }
}

/// The in-place sum of a CUDA tensor's storage, queued on the device's stream.
struct SumOp<'a>(&'a Comm);

impl InplaceOp1 for SumOp<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the NCCL sum takes CUDA tensors")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        match layout.contiguous_offsets() {
            Some((0, end)) if end == slice.len() => {}
            _ => candle_core::bail!("the NCCL sum takes whole contiguous buckets"),
        }
        self.0
            .all_reduce_in_place(slice, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok(())
    }
}
