#!/usr/bin/env bash
# The test suite, from a fresh machine: fetches the pinned assets (ONNX Runtime, the real
# teacher, real photos, zarr-python) into .cache/tinymim, then builds and runs every test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
export TINYMIM_CACHE="${TINYMIM_CACHE:-$root/.cache/tinymim}"
# The end-to-end tests drive the real binaries: build them first, in the same profile.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
