#!/usr/bin/env bash
# The test suite, from a fresh machine: fetches the pinned assets (ONNX Runtime, the real
# teacher, real photos, zarr-python, the CUDA 13.0 toolkit, Open MPI) into .cache/tinymim, builds and
# runs every test, and builds the GPU binaries and checks them on the CPU (no GPU needed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Formatting first: it needs no build and fails in seconds.
cargo fmt --all --check
scripts/setup.sh --mpi
export TINYMIM_CACHE="${TINYMIM_CACHE:-$root/.cache/tinymim}"
# The end-to-end tests drive the real binaries: build them first, in the same profile. The
# CPU build includes MPI data parallelism, which tests/data_parallel.rs runs under mpirun.
features=(--features tinymim-train/mpi)
cargo build --workspace --bins --locked "${features[@]}"
# The GPU binaries compile and link on every run (scripts/build-cuda.sh --check: toolkit from
# PyPI, stub CUDA libraries, the dev profile sharing every crate that does not depend on candle
# with the build above, unoptimised device code, to keep CI short), and
# the GPU check runs end to end in its dry mode: the same steps at tiny sizes on the CPU,
# driving those very binaries (bound to the stubs here).
scripts/build-cuda.sh --check
cargo build --workspace --bins --locked "${features[@]}"   # the CPU binaries back in target/debug (a relink)
scripts/gpu_check.sh --prepare
scripts/gpu_check.sh --dry-run --bin "$root/target/cuda-check/dist" --out "$root/target/gpu-check-dry"
# Lints as errors (the workspace's [workspace.lints] and clippy's defaults), every target.
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
cargo test --workspace --locked "${features[@]}" "$@"
