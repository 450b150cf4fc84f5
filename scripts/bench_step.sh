#!/usr/bin/env bash
# The distillation step, candle against PyTorch eager on the CPU, side by side in one run
# (BENCHMARKS.md, "Training (train)"): for vit-tiny at batch 8 and 64 and vit-small at batch 32
# (12 relation heads, 224 px), candle's step (`train bench step --step-only`), PyTorch's
# (`bench_torch_step.py`, its thread count set to ours, its BLAS printed), their ratio, and where
# each step's time goes (`profile_step.py`, perf samples; `bench_torch_step.py --profile`,
# torch.profiler). Needs a release build of train, `perf`, and a Python with torch and
# timm: TORCH_PYTHON (default .cache/torch-venv/bin/python). THREADS (default: the cores).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${TORCH_PYTHON:-$root/.cache/torch-venv/bin/python}"
threads="${THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
speed="$root/target/release/train"
[ -x "$speed" ] || cargo build --release --locked -p tinymim-train --bin train >&2
for config in "vit-tiny 8 3" "vit-tiny 64 2" "vit-small 32 2"; do
  read -r preset batch reps <<< "$config"
  echo "== $preset, batch $batch, 12 relation heads, $threads threads"
  candle=$("$speed" bench step --device cpu --step-only --preset "$preset" --batch "$batch" --heads 12 --reps "$reps" --json \
    | python3 -c 'import json,sys; print("%.2f" % json.loads(sys.stdin.read())["images_per_s"])')
  echo "candle step: $candle images/s"
  if [ -x "$python" ]; then
    torch=$("$python" scripts/bench_torch_step.py --preset "$preset" --batch "$batch" --heads 12 \
      --iters "$reps" --json 2>/dev/null | tail -n1)
    echo "$torch" | python3 -c '
import json, sys
t, c = json.loads(sys.stdin.read()), float(sys.argv[1])
print("pytorch eager step: {images_per_s:.2f} images/s (torch {torch}, {threads} threads, BLAS {blas})".format(**t))
rate = t["images_per_s"]
print(f"candle / pytorch: {c / rate:.2f}")' "$candle"
  else
    echo "(PyTorch skipped: no $python; set TORCH_PYTHON to a Python with torch and timm)"
  fi
  if command -v perf > /dev/null; then
    python3 scripts/profile_step.py --bin "$speed" --preset "$preset" --batch "$batch" --heads 12 --reps "$reps"
  fi
  if [ -x "$python" ]; then
    "$python" scripts/bench_torch_step.py --preset "$preset" --batch "$batch" --heads 12 --iters 1 \
      --profile 2>/dev/null | sed "s/^pytorch eager step:/  (profiled run):/"
  fi
done
