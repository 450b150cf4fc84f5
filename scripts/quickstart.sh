#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine (Rust and Python with pip):
# fetch the pinned assets, build, extract relation targets from a real pretrained teacher
# (DINOv2 ViT-S/14) over real photos, train a vit-tiny student from that store, probe it with
# k-NN on a labelled folder, and plot its loss. Outputs go to runs/quickstart (override with
# QUICKSTART_OUT). Minutes on a laptop CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${QUICKSTART_OUT:-$root/runs/quickstart}"
views="${QUICKSTART_VIEWS:-8}"

scripts/setup.sh
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
cargo build --release --locked --bins
bin="$root/target/release"

rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)

echo "== 1/4 extract: DINOv2-S teacher, $(ls "$cache/photos" | wc -l) photos × $views views, qkv encoding"
"$bin/extract" --teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small.toml \
  --images "$cache/photos" --views "$views" --encoding qkv --out "$out/relations.zarr" \
  | tee "$out/extract.json"
"$bin/extract" inspect "$out/relations.zarr"

echo "== 2/4 train: vit-tiny (patch 16 at 256 px = the teacher's 257 tokens), recipe cpu-quick"
"$bin/train" --cache "$out/relations.zarr" --images "$cache/photos" --student vit-tiny --image-size 256 \
  --recipe configs/recipes/cpu-quick.toml --out "$out/vit-tiny"

echo "== 3/4 probe: k-NN on frozen features, scikit-learn digits (10 classes)"
"$bin/train" probe --model "$out/vit-tiny/model.safetensors" --images "$cache/probe" | tee "$out/probe.txt"

echo "== 4/4 plot"
"$cache/venv/bin/python" scripts/plot_loss.py "$out/vit-tiny/metrics.jsonl" "$out/loss.png"

"$cache/venv/bin/python" - "$out" "$(( $(date +%s) - start ))" <<'PY'
import json, os, sys
out, wall = sys.argv[1], int(sys.argv[2])
ex = json.loads(open(os.path.join(out, "extract.json")).read().strip().splitlines()[-1])
rows = [json.loads(l) for l in open(os.path.join(out, "vit-tiny", "metrics.jsonl")) if l.strip()]
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(out, "relations.zarr")) for f in fs)
first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / len(rows[-3:])
vps = sum(r["views_per_s"] for r in rows[1:]) / max(1, len(rows) - 1)
print("== summary")
print(f"store        {out}/relations.zarr: {size / 1e6:.1f} MB, {ex['views_written']} views, {ex['bytes_per_view'] / 1e3:.0f} kB/view ({ex['encoding']})")
print(f"extract      {ex['views_per_s']:.2f} views/s on {ex['provider']}")
print(f"train        {len(rows)} steps, {vps:.2f} views/s, loss {first:.4f} -> {last:.4f} (mean of the last 3 steps)")
print(f"probe        {open(os.path.join(out, 'probe.txt')).read().strip().splitlines()[-1]}")
print(f"outputs      {out}/vit-tiny/model.safetensors, {out}/loss.png, {out}/vit-tiny/metrics.jsonl")
print(f"wall time    {wall} s after the build")
PY
