#!/usr/bin/env bash
# A relation store on object storage against the same store in a local folder, side by side in
# one run (BENCHMARKS.md, "Object storage"): moto's S3 server on 127.0.0.1 (the tests' server),
# `extract` of the real DINOv2-S teacher (224 px, ln1) over held-out Fashion-MNIST images into a
# folder and into an s3:// store, then the training loader's reads of the same rows from both
# (`bench_loader --read-store FOLDER,s3://…`: one row at a time, and micro-batches of 64 as the
# loader reads them), and a short training run from each (`train --cache`, the same seed: the same
# losses, and how long each step waited for its data).
#
#   scripts/bench_s3.sh            Environment: IMAGES (default 500), VIEWS (default 2),
#                                  BENCH_OUT (default runs/s3)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh >&2
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
cargo build --release --locked -p tinymim-extract --bin extract -p tinymim-train --bin train >&2
cargo build --release --locked -p tinymim-train --example bench_loader >&2
bin="$root/target/release"
out="${BENCH_OUT:-$root/runs/s3}"
images="${IMAGES:-500}"
views="${VIEWS:-2}"
rm -rf "$out" && mkdir -p "$out/images"
# The first IMAGES in name order (read whole: `head` closing the pipe early would fail it).
mapfile -t held_out < <(find "$cache/fashion-mnist/held-out" -type f | sort)
for f in "${held_out[@]:0:$images}"; do
  ln -s "$f" "$out/images/$(basename "$f")"
done

# The server runs until its standard input (this script's pipe) closes.
mkfifo "$out/server.in"
"$cache/venv/bin/python" formats/tests/s3_server.py bench > "$out/server.out" 2>/dev/null < "$out/server.in" &
exec 3> "$out/server.in"
trap 'exec 3>&-' EXIT
for _ in $(seq 100); do [ -s "$out/server.out" ] && break; sleep 0.1; done
export AWS_ENDPOINT_URL="$(head -n1 "$out/server.out")" AWS_ACCESS_KEY_ID=testing \
  AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
echo "== moto's S3 server at $AWS_ENDPOINT_URL; $images images × $views views" >&2

teacher=(--teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small.toml)
for place in "$out/local.zarr" "s3://bench/relations.zarr"; do
  "$bin/extract" "${teacher[@]}" --images "$out/images" --views "$views" --encoding ln1 --quiet \
    --out "$place" | tail -n1 > "$out/extract-$(basename "$place").json"
done
"$cache/venv/bin/python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
local, s3 = (json.load(open(f"{out}/extract-{n}.json")) for n in ("local.zarr", "relations.zarr"))
print(f"extract into a folder: {local['views_per_s']:.1f} views/s, {local['bytes_per_view']:.0f} bytes/view")
print(f"extract into s3://:    {s3['views_per_s']:.1f} views/s, {s3['bytes_per_view']:.0f} bytes/view "
      f"({s3['views_per_s'] / local['views_per_s']:.2f}x the folder)")
PY
"$bin/examples/bench_loader" --read-store "$out/local.zarr,s3://bench/relations.zarr"
student=(--student vit-tiny --depth 2 --batch 32 --max-steps 12 --warmup-epochs 0 --seed 1 --quiet)
for place in "$out/local.zarr" "s3://bench/relations.zarr"; do
  "$bin/train" --cache "$place" "${student[@]}" --out "$out/train-$(basename "$place")" > /dev/null
done
"$cache/venv/bin/python" - "$out" <<'PY'
import json, sys
out = sys.argv[1]
runs = {}
for name in ("local.zarr", "relations.zarr"):
    steps = [json.loads(l) for l in open(f"{out}/train-{name}/metrics.jsonl")]
    later = steps[1:]  # the first step pays the loader's start
    runs[name] = (
        [s["loss"] for s in steps],
        sum(s["data_wait_s"] for s in later),
        sum(s["views_per_s"] for s in later) / len(later),
    )
(la, wa, va), (lb, wb, vb) = runs["local.zarr"], runs["relations.zarr"]
print(f"train from a folder: {va:.1f} views/s, {wa:.2f} s waiting for data over steps 2-{len(la)}")
print(f"train from s3://:    {vb:.1f} views/s, {wb:.2f} s waiting for data ({vb / va:.2f}x the folder); "
      f"losses {'identical' if la == lb else 'DIFFER'}")
PY

