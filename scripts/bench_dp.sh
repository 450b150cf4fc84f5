#!/usr/bin/env bash
# Data-parallel training against one process, side by side in one run (BENCHMARKS.md, "Many
# processes"): `extract` of the real DINOv2-S teacher (224 px, ln1) over held-out Fashion-MNIST
# images, then the same `train` command as one process and as RANKS MPI ranks (`mpirun`, the CPU
# collective; a build with --features mpi), each rank given cores/RANKS threads so that both use
# the same cores, and once more as one process with one rank's threads. Prints views/s of each,
# the ranks against one process on the same cores, the scaling efficiency (the ranks' views/s ÷
# RANKS × one rank's share of cores alone: what the split and the gradient sum cost), the largest
# per-step loss and gradient-norm gaps and the exported weights' largest gap (all relative: the
# same run at any world size).
#
#   scripts/bench_dp.sh            Environment: IMAGES (default 200), VIEWS (default 2), RANKS
#                                  (default 2), STEPS (default 16), BENCH_OUT (default runs/dp)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh --mpi >&2
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
cargo build --release --locked -p tinymim-extract --bin extract -p tinymim-train --bin train \
  --features tinymim-train/mpi >&2
bin="$root/target/release"
out="${BENCH_OUT:-$root/runs/dp}"
images="${IMAGES:-200}"
views="${VIEWS:-2}"
ranks="${RANKS:-2}"
steps="${STEPS:-16}"
cores="$(nproc)"
rm -rf "$out" && mkdir -p "$out/images"
# The first IMAGES in name order (read whole: `head` closing the pipe early would fail it).
mapfile -t held_out < <(find "$cache/fashion-mnist/held-out" -type f | sort)
for f in "${held_out[@]:0:$images}"; do
  ln -s "$f" "$out/images/$(basename "$f")"
done
"$bin/extract" --teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small.toml \
  --images "$out/images" --views "$views" --encoding ln1 --quiet --out "$out/relations.zarr" > /dev/null
echo "== $images images × $views views; vit-tiny depth 6, batch 32, $steps steps, $cores cores" >&2

run=(--cache "$out/relations.zarr" --student vit-tiny --depth 6 --batch 32 --max-steps "$steps"
  --warmup-epochs 0 --seed 1 --quiet)
share=$((cores / ranks > 0 ? cores / ranks : 1))
RAYON_NUM_THREADS="$cores" "$bin/train" "${run[@]}" --out "$out/one" > /dev/null
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  mpirun -n "$ranks" --oversubscribe --bind-to none --mca btl self,vader -x RAYON_NUM_THREADS="$share" \
  "$bin/train" "${run[@]}" --out "$out/ranks" > /dev/null
RAYON_NUM_THREADS="$share" "$bin/train" "${run[@]}" --out "$out/share" > /dev/null
"$cache/venv/bin/python" - "$out" "$ranks" "$cores" "$share" <<'PY'
import json, statistics, struct, sys
import numpy as np
out, ranks, cores, share = sys.argv[1], *map(int, sys.argv[2:])
def metrics(name):
    return [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if l.strip()]
def weights(name):  # safetensors: a u64 header length, a JSON header, then the f32 data
    raw = open(f"{out}/{name}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4")
            for k, v in header.items() if k != "__metadata__"}
one, many, alone = metrics("one"), metrics("ranks"), metrics("share")
rate = lambda m: statistics.median(r["views_per_s"] for r in m[2:])
gap = lambda key: max(abs(a[key] - b[key]) / abs(b[key]) for a, b in zip(many, one))
w1, wn = weights("one"), weights("ranks")
def weight_gap(name):
    a, b = wn[name], w1[name]
    if name.endswith(".attn.qkv.bias"):  # the key bias has no gradient: noise by construction
        third = len(b) // 3
        a, b = (np.concatenate([x[:third], x[2 * third:]]) for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
print(f"1 process × {cores} threads: {rate(one):.2f} views/s (median of steps 3..{len(one)})")
print(f"{ranks} MPI ranks × {share}:      {rate(many):.2f} views/s: {rate(many) / rate(one):.2f}x one process on the same cores")
print(f"1 process × {share} threads: {rate(alone):.2f} views/s: scaling efficiency of {ranks} ranks "
      f"{rate(many) / (ranks * rate(alone)):.2f}")
print(f"same run: per-step loss within {gap('loss'):.1e}, gradient norm within {gap('grad_norm'):.1e}, "
      f"weights within {max(weight_gap(n) for n in w1):.1e} (relative)")
PY
