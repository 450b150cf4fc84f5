//! The training device as the command line names it — `auto`, `cpu`, `cuda` or `cuda:N` — and
//! the one place that opens it.
//!
//! CUDA needs a build with the `cuda` feature (`scripts/build-cuda.sh`); without it `cuda[:N]`
//! is refused with a sentence saying how to get one, and `auto` is the CPU. `cuda:N` is the
//! N-th GPU the process sees (after `CUDA_VISIBLE_DEVICES`), as in PyTorch; under a launcher
//! (one process per GPU), `auto` and `cuda` take the local rank's GPU
//! ([`tinymim_formats::launch::local_gpu`]).

use candle_core::Device;

use crate::precision::Precision;

pub use tinymim_formats::DeviceSpec;

/// Why a named device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// CUDA was asked of a build without it.
    #[error(
        "--device {0}: this binary was built without CUDA support; build the GPU binaries with \
         scripts/build-cuda.sh (or `cargo build --release -p tinymim-train --features cuda`)"
    )]
    NotBuilt(DeviceSpec),
    /// The GPU could not be opened (no driver, no such ordinal, ...).
    #[error("--device {spec}: no usable CUDA device: {reason}")]
    Unavailable {
        /// What was asked for.
        spec: DeviceSpec,
        /// What CUDA said.
        reason: String,
    },
}

/// Opens the device `spec` names. `auto` tries CUDA only in a CUDA build and falls back to the
/// CPU when no GPU answers; an explicit `cuda[:N]` that cannot be opened is an error.
pub fn open(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto if cfg!(feature = "cuda") => {
            let local = tinymim_formats::launch::local_gpu(&|k| std::env::var(k).ok());
            Ok(open(DeviceSpec::Cuda(local)).unwrap_or(Device::Cpu))
        }
        DeviceSpec::Auto => Ok(Device::Cpu),
        DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NotBuilt(spec)),
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| DeviceError::Unavailable {
            spec,
            // candle appends a backtrace to some errors; the sentence is the first line.
            reason: e.to_string().lines().next().unwrap_or_default().to_string(),
        }),
    }
}

/// How `device` reads in a log line: `cpu` or `cuda:N`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Sets candle's cuBLAS switches for `precision` (process-wide; no effect on the CPU or in a
/// build without CUDA):
///
/// - float32 products stay IEEE float32 (no TF32), as PyTorch's default
///   `allow_tf32 = False`, so a CUDA step equals the CPU step to float32 rounding;
/// - bfloat16 products accumulate in float32 (`CUBLAS_COMPUTE_32F`), as under
///   `torch.autocast`, rather than in reduced precision;
/// - [`Precision::Tf32`] turns TF32 tensor cores on for the float32 products.
pub fn configure_gemm(precision: Precision) {
    candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
    candle_core::cuda::set_gemm_reduced_precision_bf16(false);
    candle_core::cuda::set_gemm_reduced_precision_f16(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_open_without_a_gpu() {
        assert!(open(DeviceSpec::Cpu).unwrap().is_cpu());
        // In a CPU build (or a CUDA build on a machine without a GPU) auto is the CPU.
        if !cfg!(feature = "cuda") {
            assert!(open(DeviceSpec::Auto).unwrap().is_cpu());
            let err = open(DeviceSpec::Cuda(1)).unwrap_err().to_string();
            assert!(
                err.contains("--device cuda:1") && err.contains("build-cuda.sh"),
                "{err}"
            );
        }
    }
}
