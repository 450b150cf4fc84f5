//! What the training examples share: `--name value` flags, and the device and precision they
//! name.

#![allow(dead_code)] // each example uses its own subset

use candle_core::Device;
use tinymim_train::device::DeviceSpec;
use tinymim_train::Precision;

/// The value after `--name` on the command line.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--name N`, or `default`.
pub fn number(name: &str, default: usize) -> usize {
    flag(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number, not {v}"))
    })
}

/// Whether `--name` is on the command line.
pub fn switch(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// `--device auto|cpu|cuda[:N]` (default cpu), opened.
pub fn device() -> Device {
    let spec: DeviceSpec = flag("--device")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    tinymim_train::device::open(spec).unwrap_or_else(|e| panic!("{e}"))
}

/// A precision by its command-line name.
pub fn precision_named(name: &str) -> Precision {
    match name {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        "tf32" => Precision::Tf32,
        other => panic!("unknown precision {other}: expected f32, bf16 or tf32"),
    }
}

/// `--precision f32|bf16|tf32` (default f32).
pub fn precision() -> Precision {
    precision_named(&flag("--precision").unwrap_or_else(|| "f32".into()))
}
