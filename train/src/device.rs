//! The training device as the command line names it — `auto`, `cpu`, `cuda` or `cuda:N` — and
//! the one place that opens it.
//!
//! CUDA needs a build with the `cuda` feature (`scripts/build-cuda.sh`); without it `cuda[:N]`
//! is refused with a sentence saying how to get one, and `auto` is the CPU. `cuda:N` is the
//! N-th GPU the process sees (after `CUDA_VISIBLE_DEVICES`), as in PyTorch; one process per GPU
//! takes `cuda:$LOCAL_RANK`.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::precision::Precision;

/// A device named on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The first CUDA GPU when this build has CUDA and a GPU answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
}

/// Why a named device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The text is not a device name.
    #[error("unknown device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
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

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The same choice for ONNX Runtime (a teacher run by `train probe --teacher`).
    pub fn onnx_runtime(self) -> tinymim_extract::runtime::Device {
        use tinymim_extract::runtime::Device as Ort;
        match self {
            DeviceSpec::Auto => Ort::Auto,
            DeviceSpec::Cpu => Ort::Cpu,
            DeviceSpec::Cuda(n) => Ort::Cuda(n),
        }
    }

    /// Opens the device. `auto` tries CUDA only in a CUDA build and falls back to the CPU when
    /// no GPU answers; an explicit `cuda[:N]` that cannot be opened is an error.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto if cfg!(feature = "cuda") => {
                Ok(DeviceSpec::Cuda(0).open().unwrap_or(Device::Cpu))
            }
            DeviceSpec::Auto => Ok(Device::Cpu),
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NotBuilt(self)),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| DeviceError::Unavailable {
                spec: self,
                // candle appends a backtrace to some errors; the sentence is the first line.
                reason: e.to_string().lines().next().unwrap_or_default().to_string(),
            }),
        }
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
    fn names_parse_and_print_back() {
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:7", DeviceSpec::Cuda(7)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        // In a CPU build (or a CUDA build on a machine without a GPU) auto is the CPU.
        if !cfg!(feature = "cuda") {
            assert!(DeviceSpec::Auto.open().unwrap().is_cpu());
            let err = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
            assert!(
                err.contains("--device cuda:1") && err.contains("build-cuda.sh"),
                "{err}"
            );
        }
    }
}
