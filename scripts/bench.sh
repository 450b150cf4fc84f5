#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md (release build, CPU). Each benchmark measures its
# comparisons side by side in one run and prints them; the machine's load changes absolute
# figures, so run on an otherwise idle machine and read the ratios.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
export TINYMIM_CACHE="${TINYMIM_CACHE:-$root/.cache/tinymim}"
cargo build --release --locked --workspace --bins --examples
ex="$root/target/release/examples"

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== rendering: views/s per core (formats)"
"$ex/render_bench"
echo "== store: write, read, decode per encoding at ViT-L size (formats)"
"$ex/store_bench" 48
echo "== extraction vs the bare teacher, per encoding (extract)"
"$ex/bench_extract" 16 8
echo "== teacher export: ViT-B/16 export time and views/s (extract teacher)"
"$ex/bench_export" --batch 8 --iters 3
echo "== training: cache vs online teacher vs synthetic targets (train)"
"$ex/bench_train" --steps 11 --batch 16 --views 2
echo "== training step: candle vs PyTorch eager, vit-tiny b8/b64, vit-small b32, with profiles"
TORCH_PYTHON="${TORCH_PYTHON:-.cache/torch-venv/bin/python}" scripts/bench_step.sh

