#!/usr/bin/env bash
# Builds the GPU binaries on any Linux x86_64 machine, with or without a GPU, from pinned
# packages only: the CUDA 13.0 toolkit from NVIDIA's PyPI wheels (scripts/setup.sh --cuda),
# link-time stubs of the driver, cuBLAS, cuRAND and NVRTC (scripts/cuda_stubs.py), then
#
#   target/cuda/release/train            `train` with candle's CUDA backend (--device cuda[:N])
#   target/cuda/release/examples/...     student_speed, bench_train, device_check (GPU checks)
#   target/cuda/dist/                    the same, stripped, ready to copy to a GPU machine
#
# The kernels are compiled for compute capability $CUDA_COMPUTE_CAP (default 90: Hopper,
# H100/H200; 80 builds PTX that Ampere and Hopper both load). At run time the binary needs the
# NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime libraries libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 on the loader's
# path: scripts/cuda-libs.sh prints that path from an installed PyTorch or the nvidia-* wheels.
# `extract` needs no CUDA build: its CUDA execution provider comes from the onnxruntime-gpu
# library it loads at run time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh --cuda
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
toolkit="$cache/cuda/13.0"
target="$root/target/cuda"
stubs="$target/stubs"

cudarc_src="$(cargo metadata --locked --format-version 1 | python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
[pkg] = [p for p in meta["packages"] if p["name"] == "cudarc"]
print(os.path.join(os.path.dirname(pkg["manifest_path"]), "src"))')"
python3 scripts/cuda_stubs.py "$cudarc_src" "$stubs"

export PATH="$toolkit/bin:$PATH"
export CUDA_HOME="$toolkit"          # cudaforge: nvcc, headers; cudarc: link search
export CUDA_ROOT="$stubs"            # cudarc: link search for the stubs (lib/)
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$stubs/lib:$toolkit/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
began=$(date +%s)
cargo build --release --locked -p tinymim-train --features cuda --bins \
  --example student_speed --example bench_train --example device_check --target-dir "$target"
echo "build-cuda: built in $(( $(date +%s) - began )) s for compute capability $CUDA_COMPUTE_CAP"

dist="$target/dist"
mkdir -p "$dist"
for bin in release/train release/examples/student_speed release/examples/bench_train \
           release/examples/device_check; do
  strip -o "$dist/$(basename "$bin")" "$target/$bin"
done
# Which libraries the binaries ask the loader for: the real names, never the stubs' paths.
readelf -d "$dist/train" | grep -q 'libcuda.so.1' || { echo "build-cuda: train does not link libcuda.so.1" >&2; exit 1; }
echo "build-cuda: stripped binaries in $dist ($(du -sh "$dist" | cut -f1)); needs at run time:" \
  "$(readelf -d "$dist/train" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -E 'cu|nvrtc' | tr '\n' ' ')"
