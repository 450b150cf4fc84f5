#!/usr/bin/env bash
# The transfer benchmark (BENCHMARKS.md, "Students learn"): distil students from the real
# DINOv2-S teacher (at 112 px) on Fashion-MNIST's unlabelled training images, then measure on
# data the students never saw: the relation loss on a held-out store of test images (`train
# eval`) and k-NN and linear probes trained on 2,000 labelled training images and tested on
# 1,000 test images (`train probe`). Every student is printed beside its random-initialised
# twin, the teacher's own layers and raw pixels, by the same code on the same split; and once
# TinyMIM's sequential route: the distilled vit-tiny exported as the next teacher, a smaller
# student distilled from it.
#
#   scripts/bench_transfer.sh [RUN ...]   RUN = NAME:STUDENT_FLAGS:EPOCHS, e.g.
#                                         "tiny-2:--student vit-tiny:2" (default: the table's runs)
# Environment: BENCH_OUT (default runs/transfer), VIEWS (views per unlabelled image, default 4),
# IMAGES (unlabelled images used, default all 10,000), RECIPE (default configs/recipes/transfer.toml),
# NO_SEQUENTIAL (set: skip the sequential route). BENCHMARKS.md's table: IMAGES=5000.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh >&2
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
cargo build --release --locked --bins >&2
bin="$root/target/release"
out="${BENCH_OUT:-$root/runs/transfer}"
views="${VIEWS:-4}"
recipe="${RECIPE:-configs/recipes/transfer.toml}"
data="$cache/fashion-mnist"
teacher=(--teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small-112.toml)
mkdir -p "$out"
if [ $# -eq 0 ]; then
  set -- "tiny6-1:--student vit-tiny --depth 6:1" "tiny6-2:--student vit-tiny --depth 6:2" "tiny-1:--student vit-tiny:1"
fi
log() { printf '== %s\n' "$*" >&2; }
now() { date +%s.%N; }

unlabelled="$data/unlabelled"
if [ -n "${IMAGES:-}" ]; then
  unlabelled="$out/unlabelled-$IMAGES"
  if [ ! -d "$unlabelled" ]; then
    mkdir -p "$unlabelled"
    ls "$data/unlabelled" | sort | sed -n "1,${IMAGES}p" | while read -r f; do ln -s "$data/unlabelled/$f" "$unlabelled/$f"; done
  fi
fi

log "extract: $(ls "$unlabelled" | wc -l) unlabelled images × $views views, and the held-out store (500 test images × 1 view)"
t0=$(now)
"$bin/extract" "${teacher[@]}" --images "$unlabelled" --views "$views" --encoding ln1 --quiet \
  --out "$out/train.zarr" > "$out/extract-train.json"
"$bin/extract" "${teacher[@]}" --images "$data/held-out" --views 1 --encoding ln1 --quiet \
  --out "$out/held-out.zarr" > "$out/extract-held-out.json"
log "extract took $(echo "$(now) - $t0" | bc) s"

# probe NAME MODEL [extra flags]: the probe (twin, pixels; --teacher once) into NAME/probe.json
probe() {
  local name=$1 model=$2; shift 2
  "$bin/train" probe --model "$model" --images "$data/probe-train" --test-images "$data/probe-test" \
    --json "$out/$name/probe.json" "$@" > "$out/$name/probe.txt"
}

# distil NAME STORE STUDENT_FLAGS EPOCHS HELD_OUT: train, held-out loss, probe; wall times in NAME/times.json
distil() {
  local name=$1 store=$2 flags=$3 epochs=$4 held_out=$5
  if [ -f "$out/$name/probe.json" ]; then
    log "$name: finished in an earlier run, kept (delete $out/$name to redo it)"
    return
  fi
  log "train $name: $flags, $epochs epochs from $(basename "$store")"
  rm -rf "$out/$name"
  local t0 t1
  t0=$(now)
  # shellcheck disable=SC2086
  "$bin/train" --cache "$store" --images "$unlabelled" $flags --image-size 128 --recipe "$recipe" \
    --epochs "$epochs" --quiet --out "$out/$name" > "$out/$name.train.txt"
  mv "$out/$name.train.txt" "$out/$name/train.txt"
  t1=$(now)
  "$bin/train" eval --cache "$held_out" --images "$data/held-out" --model "$out/$name/model.safetensors" \
    --json "$out/$name/eval.json" > "$out/$name/eval.txt"
  probe "$name" "$out/$name/model.safetensors" "${@:6}"
  printf '{"train_s": %s}\n' "$(echo "$t1 - $t0" | bc)" > "$out/$name/times.json"
  log "$name: $(cat "$out/$name/eval.txt")"
  log "$name: $(tail -1 "$out/$name/probe.txt")"
}

first=1
for run in "$@"; do
  IFS=: read -r name flags epochs <<< "$run"
  if [ $first = 1 ]; then
    distil "$name" "$out/train.zarr" "$flags" "$epochs" "$out/held-out.zarr" "${teacher[@]}"
    first=0
  else
    distil "$name" "$out/train.zarr" "$flags" "$epochs" "$out/held-out.zarr"
  fi
done

# TinyMIM's sequential route: the first run's student becomes the teacher of a smaller student.
if [ -z "${NO_SEQUENTIAL:-}" ]; then
  first_name=${1%%:*}
  log "sequential: $first_name exported as the next teacher (extract teacher)"
  # --heads 6: the adaptive block was trained with the DINOv2 teacher's 6 relation heads.
  "$bin/extract" teacher --checkpoint "$out/$first_name/model.safetensors" --heads 6 --out "$out/next-teacher.onnx" >&2
  next=(--teacher "$out/next-teacher.onnx")
  "$bin/extract" "${next[@]}" --images "$unlabelled" --views "$views" --quiet --out "$out/next-train.zarr" > /dev/null
  "$bin/extract" "${next[@]}" --images "$data/held-out" --views 1 --quiet --out "$out/next-held-out.zarr" > /dev/null
  epochs=${1##*:}
  # The smaller student: half vit-tiny's width (D 96, 3 heads; the 6 relation heads divide it).
  distil "seq-mini6-$epochs" "$out/next-train.zarr" "--student vit-tiny --dim 96 --mlp-dim 384 --depth 6" "$epochs" "$out/next-held-out.zarr"
fi

"$cache/venv/bin/python" scripts/transfer_table.py "$out"
