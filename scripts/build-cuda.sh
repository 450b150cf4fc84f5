#!/usr/bin/env bash
# Builds the GPU binaries on any Linux x86_64 machine, with or without a GPU, from pinned
# packages only: the CUDA 13.0 toolkit from NVIDIA's PyPI wheels (scripts/setup.sh --cuda),
# link-time stubs of the driver, cuBLAS, cuRAND and NVRTC (scripts/cuda_stubs.py), then
#
#   target/cuda/release/train            `train` with candle's CUDA backend (--device cuda[:N]); it
#                                        is also every GPU check (`train bench parity|step|
#                                        throughput|rendezvous`), so one binary carries candle's PTX
#   target/cuda/dist/train               the same, stripped; scripts/gpu_check.sh --prepare packs it
#                                        (xz) into target/cuda/carry for a GPU machine
#
# The kernels are compiled for compute capability $CUDA_COMPUTE_CAP (default 90: Hopper,
# H100/H200; 80 builds PTX that Ampere and Hopper both load). At run time the binary needs the
# NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime libraries libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13 and NCCL's libnccl.so.2 on the loader's
# path (PyTorch's nvidia-* wheels carry them; scripts/gpu_check.sh finds them there).
# `extract` needs no CUDA build: its CUDA execution provider comes from the onnxruntime-gpu
# library it loads at run time.
#
# --check (what the test command runs on every CI run): the same sources, features, kernels and
# link, built faster for checking than for running on a GPU: the dev profile in the workspace's
# own target folder (so every crate that does not depend on candle is shared with the CPU build),
# device code unoptimised (nvcc -Xcicc -O0 -Xptxas -O0); stripped copies in
# target/cuda-check/dist/. It leaves the CUDA binaries in target/debug/: rebuild the CPU ones
# after it (`cargo build --workspace --bins`, which only relinks them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile=release
target="$root/target/cuda"   # cargo's target folder
work="$target"               # stubs/, dist/ and carry/
case "${1:-}" in
  --check) profile=dev; target="$root/target"; work="$root/target/cuda-check"
           export NVCC_APPEND_FLAGS="-Xcicc -O0 -Xptxas -O0${NVCC_APPEND_FLAGS:+ $NVCC_APPEND_FLAGS}" ;;
  "") ;;
  *) echo "build-cuda: unknown option $1 (known: --check)" >&2; exit 2 ;;
esac
scripts/setup.sh --cuda
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
toolkit="$cache/cuda/13.0"
stubs="$work/stubs"

cudarc_src="$(cargo metadata --locked --format-version 1 --features tinymim-train/cuda | python3 -c '
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
cargo build --profile "$profile" --locked -p tinymim-train --features cuda,nccl --bin train --target-dir "$target"
echo "build-cuda: built ($profile profile) in $(( $(date +%s) - began )) s for compute capability $CUDA_COMPUTE_CAP"

out_dir="$target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
dist="$work/dist"
mkdir -p "$dist"
strip -o "$dist/train" "$out_dir/train"
# Which libraries the binaries ask the loader for: the real names, never the stubs' paths.
readelf -d "$dist/train" | grep -q 'libcuda.so.1' || { echo "build-cuda: train does not link libcuda.so.1" >&2; exit 1; }
echo "build-cuda: stripped binary in $dist ($(du -sh "$dist" | cut -f1)); needs at run time:" \
  "$(readelf -d "$dist/train" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -E 'cu|nvrtc|nccl' | tr '\n' ' ')"
