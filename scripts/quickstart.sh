#!/usr/bin/env bash
# The main job on the embedded default, from a fresh machine (Rust and Python with pip): fetch the
# pinned assets, build, extract relation targets from a real pretrained teacher (DINOv2 ViT-S/14
# at 112 px) over Fashion-MNIST's unlabelled training images, distil a small ViT student from that
# store, then show whether it learned: its relation loss on held-out test images and k-NN and
# linear probes on labelled images it never saw, each beside its random-initialised twin (same
# architecture and seed, zero steps), the teacher's own layers and raw pixels. Outputs go to
# runs/quickstart (override with QUICKSTART_OUT). Minutes on a laptop CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${QUICKSTART_OUT:-$root/runs/quickstart}"
images="${QUICKSTART_IMAGES:-2000}"
views="${QUICKSTART_VIEWS:-2}"

# The build and the asset fetch side by side (neither needs the other; on a fresh machine they are
# the first run's two long waits). Without `s3://` support (the default feature `s3`): the
# quickstart's store is a folder, and the object-store stack is a third of a clean build.
cargo build --release --locked --bins --no-default-features &
build=$!
setup_rc=0
scripts/setup.sh || setup_rc=$?
build_rc=0
wait "$build" || build_rc=$?
[ "$setup_rc" = 0 ] || { echo "quickstart: scripts/setup.sh failed (exit status $setup_rc)" >&2; exit 1; }
[ "$build_rc" = 0 ] || { echo "quickstart: cargo build failed (exit status $build_rc)" >&2; exit 1; }
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
bin="$root/target/release"
fm="$cache/fashion-mnist"
teacher=(--teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small-112.toml)

rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)

# Subsets by file name (the same on every machine): the first $images unlabelled training images,
# 200 held-out test images, and a labelled probe of 50 training / 30 test images per class.
subset() { # subset SRC DST COUNT: links to the first COUNT files of SRC, sorted by name
  mkdir -p "$2"
  ls "$1" | sort | sed -n "1,${3}p" | while read -r f; do ln -s "$1/$f" "$2/$f"; done
}
subset "$fm/unlabelled" "$out/data/unlabelled" "$images"
subset "$fm/held-out" "$out/data/held-out" 200
for class in $(ls "$fm/probe-train"); do
  subset "$fm/probe-train/$class" "$out/data/probe-train/$class" 50
  subset "$fm/probe-test/$class" "$out/data/probe-test/$class" 30
done

echo "== 1/5 extract: DINOv2-S at 112 px (65 tokens), $images Fashion-MNIST training images × $views views (ln1), and 200 held-out test images × 1 view"
"$bin/extract" "${teacher[@]}" --images "$out/data/unlabelled" --views "$views" --encoding ln1 \
  --out "$out/relations.zarr" | tee "$out/extract.json"
"$bin/extract" "${teacher[@]}" --images "$out/data/held-out" --views 1 --encoding ln1 --quiet \
  --out "$out/held-out.zarr" > /dev/null
"$bin/extract" inspect "$out/relations.zarr"

echo "== 2/5 train: vit-tiny with 6 blocks (patch 16 at 128 px = the teacher's 65 tokens), recipe quickstart"
"$bin/train" --cache "$out/relations.zarr" --student vit-tiny --depth 6 --image-size 128 \
  --recipe configs/recipes/quickstart.toml --out "$out/student"

echo "== 3/5 eval: relation loss on the held-out store, the student beside its random-init twin"
"$bin/train" eval --cache "$out/held-out.zarr" --model "$out/student/model.safetensors" \
  --json "$out/eval.json" | tee "$out/eval.txt"

echo "== 4/5 probe: k-NN and linear on frozen features, 500 labelled training / 300 test images"
"$bin/train" probe --model "$out/student/model.safetensors" --images "$out/data/probe-train" \
  --test-images "$out/data/probe-test" "${teacher[@]}" --json "$out/probe.json" | tee "$out/probe.txt"

echo "== 5/5 plot"
"$cache/venv/bin/python" scripts/plot_loss.py "$out/student/metrics.jsonl" "$out/loss.png"

"$cache/venv/bin/python" scripts/quickstart_summary.py "$out" "$(( $(date +%s) - start ))"
