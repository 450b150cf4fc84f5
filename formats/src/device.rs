//! The `--device` argument both binaries take: `auto`, `cpu`, `cuda` or `cuda:N` (the N-th GPU
//! the process sees, after `CUDA_VISIBLE_DEVICES`, as in PyTorch). Bare `cuda` is this process's
//! own GPU under a launcher, one process per GPU ([`local_gpu`]: the local rank's, or 0 when
//! `CUDA_VISIBLE_DEVICES` leaves the process one); `auto` takes the same GPU when it takes one.
//! What each opens is the binary's business: ONNX Runtime's execution provider in `extract`, a
//! candle device in `train`.

use std::fmt;
use std::str::FromStr;

use crate::launch::local_gpu;

/// A device named on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A CUDA GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU of this ordinal; an error when it is unusable.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    /// `auto`, `cpu`, `cuda:N`, or `cuda`: the launcher's local GPU of this process's
    /// environment ([`local_gpu`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s, &|name| std::env::var(name).ok())
    }
}

/// `s` as a device, bare `cuda` resolved with the variables of `get`.
fn parse(s: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<DeviceSpec, String> {
    match s {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(local_gpu(get))),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("unknown device `{s}`: expected auto, cpu, cuda or cuda:N")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), text);
        }
        let env = |name: &str| std::env::var(name).ok();
        assert_eq!(
            "cuda".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(local_gpu(&env))
        );
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains(bad) && err.contains("cuda:N"), "{err}");
        }
    }

    #[test]
    fn bare_cuda_is_the_launchers_local_gpu_and_cuda_n_is_explicit() {
        let lookup = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = lookup(&[]);
        let rank_3 = lookup(&[("LOCAL_RANK", "3")]);
        let own_gpu = lookup(&[("SLURM_LOCALID", "3"), ("CUDA_VISIBLE_DEVICES", "5")]);
        assert_eq!(parse("cuda", &none), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse("cuda", &rank_3), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(parse("cuda", &own_gpu), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse("cuda:1", &rank_3), Ok(DeviceSpec::Cuda(1)));
        assert_eq!(parse("auto", &rank_3), Ok(DeviceSpec::Auto));
    }
}
