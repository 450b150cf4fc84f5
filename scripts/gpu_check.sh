#!/usr/bin/env bash
# The GPU check: validates and times the GPU paths on a GPU machine that has no network, running
# only what was built and prepared elsewhere.
#
# THE RULE: whenever a GPU machine is lent, its first call runs this script, prepared here
# beforehand (`scripts/build-cuda.sh`, then `scripts/gpu_check.sh --prepare`); nothing goes
# before it. GPU minutes are the scarcest thing this project has. Record its JSON in
# BENCHMARKS.md ("GPU") with the date and the card.
#
#   scripts/gpu_check.sh --prepare      here: the check data, the carry (the CUDA `train` and the
#                                       CPU `extract`, xz-compressed) and ONNX Runtime's GPU build
#                                       cut into parts (stages); prints every call's carry size
#                                       and the calls to make
#   scripts/gpu_check.sh                call 1 on the GPU machine, with target/cuda/carry,
#                                       target/cuda/gpu-check and target/cuda/ort-stage/part-1
#                                       carried there
#   scripts/gpu_check.sh --stage K      call K (2, 3, …) right after the one before (files carried
#                                       by earlier calls stay on the machine while it is warm),
#                                       with target/cuda/ort-stage/part-K carried: checks that
#                                       part's sha256; the call that completes the parts unpacks
#                                       ONNX Runtime's CUDA provider and times extraction
#   scripts/gpu_check.sh --dry-run      every step at tiny sizes on the CPU, the stages included
#                                       (ONNX Runtime's CPU build cut into small parts): CI
#
# Steps, in the order of what their figures are worth, each under a time guard (skipped, and
# recorded as skipped, when less of the call's budget is left than its guard), each writing its
# JSON lines to $OUT/gpu_check.jsonl, after each of which $OUT/gpu_check.json is rewritten
# (scripts/gpu_check_report.py): a call cut at the 10-minute limit still brings back everything
# done before.
#   1. parity: the CUDA step vs the CPU step, f32 (1e-4) and bf16 (2e-2), loss and every
#      gradient (`train bench parity`);
#   2. the student step in bf16, candle vs PyTorch eager and torch.compile on the same model,
#      batch and precision: vit-small b256 first (the public anchor), then vit-tiny b256 and
#      vit-base b128 (`train bench step`, bench_torch_step.py);
#   3. training from a real store vs synthetic targets, views/s and the data-wait share
#      (`train bench throughput`, bf16);
#   4. training from the store on the device vs on the CPU, same command: both losses fall, and
#      per step they agree, from `ln1` and from `ln1-int8` (decoded on the device);
#   5. the student step in f32, candle vs PyTorch eager; torch.compile for vit-tiny and vit-base;
#   6. many GPUs: the start-up hand-off of 4 ranks under a real torchrun (`train bench
#      rendezvous`; no GPU needed), and where the machine has ≥ 2 GPUs, `train` on 2 NCCL ranks
#      vs one process (per-step losses and gradient norms, scaling efficiency);
#   7. (the stage that completes ONNX Runtime's GPU build) extraction through its CUDA execution
#      provider: `extract bench` on MAE ViT-L to block 18 (exported there from random weights:
#      450 MB of ONNX is cheaper to make than to carry), `ln1-int8` and `ln1`, the whole pipeline
#      against the bare ORT session on the same views.
# The PyTorch steps run where `import torch, timm` works and are recorded as skipped elsewhere.
# Options: --bin DIR (binaries; default target/cuda/dist, unpacked from target/cuda/carry),
# --out DIR (default $OUT, else runs/gpu_check), --device D (default cuda:0; cpu with
# --dry-run), --budget SECS (the call's time for its steps; default 330 on a GPU, 900 dry).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode=gpu
stage=""
bin="$root/target/cuda/dist"
out="${OUT:-$root/runs/gpu_check}"
device=cuda:0
budget=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare ;;
    --dry-run) mode=dry; device=cpu ;;
    --stage) stage="$2"; shift ;;
    --bin) bin="$2"; shift ;;
    --out) out="$2"; shift ;;
    --device) device="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
log() { printf 'gpu_check: %s\n' "$*" >&2; }
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
data="$root/target/cuda/gpu-check"
carry="$root/target/cuda/carry"
if [ "$mode" = dry ]; then
  stages="$root/target/gpu-check-dry-stages"
else
  stages="$root/target/cuda/ort-stage"
fi
# Every call carries at most 64 MiB (the device tool's limit); this leaves room for its margin.
call_limit=$((62 * 1024 * 1024))

# ---------------------------------------------------------------------------------------------
# --prepare (here)
bytes() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
# cut_stages SOURCE_DIR DEST FIRST_PART_BYTES PART_BYTES: SOURCE_DIR's files as one tar.xz, cut
# into DEST/part-K/ort.tar.xz.NN, each part folder with the SHA256SUMS of every part and the whole.
cut_stages() {
  local source=$1 dest=$2 first=$3 rest=$4
  rm -rf "$dest"
  mkdir -p "$dest/whole"
  tar -C "$source" -cf - . | xz -T2 -6 > "$dest/whole/ort.tar.xz"
  local whole="$dest/whole/ort.tar.xz" size offset=0 k=1
  size=$(stat -c %s "$whole")
  while [ "$offset" -lt "$size" ]; do
    local len=$rest
    [ "$k" = 1 ] && len=$first
    mkdir -p "$dest/part-$k"
    dd if="$whole" of="$dest/part-$k/ort.tar.xz.$(printf %02d "$k")" bs=1M iflag=skip_bytes,count_bytes \
      skip="$offset" count="$len" status=none
    offset=$((offset + len)); k=$((k + 1))
  done
  (cd "$dest" && sha256sum part-*/ort.tar.xz.* whole/ort.tar.xz | sed 's| part-[0-9]*/| |; s| whole/| |' > SHA256SUMS)
  echo "$((k - 1))" > "$dest/parts"
  for part in "$dest"/part-*; do cp "$dest/SHA256SUMS" "$dest/parts" "$part/"; done
  rm -rf "$dest/whole"
}

if [ "$mode" = prepare ]; then
  extract="$root/target/release/extract"
  [ -x "$extract" ] || extract="$root/target/debug/extract"
  [ -x "$extract" ] || { log "no extract binary: run cargo build --release --bins first"; exit 1; }
  rm -rf "$data"
  mkdir -p "$data"
  cp -r "$cache/photos" "$data/photos"
  # DINOv2-S at 112 px (65 tokens: a patch-16 student at 128 px): small rows, so that the int8
  # store holds more than one batch of 256 views within the carry.
  teacher=(--teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small-112.toml)
  "$extract" "${teacher[@]}" --images "$data/photos" --views 4 --encoding ln1 --out "$data/ln1.zarr" --quiet >/dev/null
  "$extract" "${teacher[@]}" --images "$data/photos" --views 26 --encoding ln1-int8 --out "$data/ln1-int8.zarr" --quiet >/dev/null
  # The carry: the CUDA train (scripts/build-cuda.sh) and the CPU extract of the release build.
  if [ -x "$root/target/cuda/dist/train" ] && [ -x "$root/target/release/extract" ]; then
    rm -rf "$carry"
    mkdir -p "$carry"
    xz -9 -T2 -c "$root/target/cuda/dist/train" > "$carry/train.xz"
    strip -o "$carry/extract" "$root/target/release/extract"
    xz -9 -T2 "$carry/extract"
  else
    log "no carry: needs target/cuda/dist/train (scripts/build-cuda.sh) and target/release/extract (cargo build --release --bins)"
  fi
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  call1=$((tree + $(bytes "$carry") + $(bytes "$data")))
  log "call 1 carries: working tree $(mib "$tree") + carry $(mib "$(bytes "$carry")") + check data $(mib "$(bytes "$data")") = $(mib "$call1")"
  # ONNX Runtime's GPU build in parts: the first fills call 1 up to the limit, the others a call each.
  ort="${ORT_GPU_DIR:-$cache/onnxruntime-gpu}"
  if [ -d "$ort" ]; then
    first=$((call_limit - call1))
    [ "$first" -ge $((1024 * 1024)) ] || { log "call 1 alone is over $(mib "$call_limit"): nothing left for part 1"; exit 1; }
    cut_stages "$ort" "$stages" "$first" $((call_limit - tree))
    n=$(cat "$stages/parts")
    log "ONNX Runtime GPU build ($(mib "$(bytes "$ort")")) as $n parts ($(mib "$(bytes "$stages")") xz)"
    log "call 1: scripts/gpu_check.sh, carry target/cuda/carry target/cuda/gpu-check target/cuda/ort-stage/part-1 ($(mib $((call1 + $(bytes "$stages/part-1")))))"
    for k in $(seq 2 "$n"); do
      log "call $k: scripts/gpu_check.sh --stage $k, carry target/cuda/ort-stage/part-$k ($(mib $((tree + $(bytes "$stages/part-$k")))))"
    done
  else
    log "no $ort: run scripts/setup.sh --ort-gpu to stage ONNX Runtime's CUDA provider (extraction on the GPU)"
  fi
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# On the GPU machine (or the CPU, dry): the binaries, the libraries, the report.
[ -d "$data/ln1.zarr" ] && [ -d "$data/ln1-int8.zarr" ] || { log "no check data in $data: run scripts/gpu_check.sh --prepare first"; exit 1; }
if [ ! -x "$bin/train" ] && [ -d "$carry" ] && [ "$bin" = "$root/target/cuda/dist" ]; then
  mkdir -p "$bin"
  for packed in "$carry"/*.xz; do
    unpacked="$bin/$(basename "$packed" .xz)"
    xz -dc "$packed" > "$unpacked" && chmod +x "$unpacked"
  done
  log "unpacked $(ls "$carry" | wc -l) binaries from $carry into $bin"
fi
train="$bin/train"
[ -x "$train" ] || { log "missing $train: build it with scripts/build-cuda.sh"; exit 1; }
extract="$bin/extract"
[ -x "$extract" ] || extract="$root/target/release/extract"
[ -x "$extract" ] || extract="$root/target/debug/extract"
mkdir -p "$out"
jsonl="$out/gpu_check.jsonl"
: > "$jsonl"
began=$SECONDS
[ -n "$budget" ] || budget=$([ "$mode" = dry ] && echo 900 || echo 330)

# The CUDA runtime libraries (cuBLAS, cuRAND, NVRTC, cudart, NCCL, and for ONNX Runtime's CUDA
# provider cuDNN and cuFFT): PyTorch's nvidia-* wheels on a GPU machine; in a dry run without
# them, the build's stubs, so that the very binary that travels to the GPU is checked here.
libs="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)"
if [ -z "$libs" ] && [ "$mode" = dry ] && [ -d "$bin/../stubs/lib" ]; then
  # The stubs, and the toolkit's real libcudart (it loads the driver only when first called).
  libs="$(cd "$bin/../stubs/lib" && pwd):$cache/cuda/13.0/lib"
fi
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
report() { python3 scripts/gpu_check_report.py "$out" $((SECONDS - began)) "$@"; }
record() { echo "$1" >> "$jsonl"; report; }
python3 - "$jsonl" "$mode" "$device" "${stage:-1}" "$budget" <<'PY'
import json, os, subprocess, sys
jsonl, mode, device, stage, budget = sys.argv[1:]
gpu = None
if mode == "gpu":
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True)
        gpu = smi.stdout.strip() if smi.returncode == 0 else f"nvidia-smi failed: {smi.stderr.strip()}"
    except OSError as e:
        gpu = f"nvidia-smi not runnable: {e}"
line = {"check": "environment", "mode": mode, "call": int(stage), "device": device,
        "cores": os.cpu_count(), "gpu": gpu, "budget_s": int(budget)}
open(jsonl, "a").write(json.dumps(line) + "\n")
PY
report

# step NAME GUARD_SECONDS COMMAND...: runs a step that prints JSON lines, under `timeout GUARD`,
# unless less of the budget is left than GUARD (then recorded as skipped). A failing step is
# recorded and the script goes on, so one failure costs no other figure (the exit status says
# whether any failed).
failures=0
step() {
  local name=$1 guard=$2; shift 2
  local left=$((budget - (SECONDS - began)))
  if [ "$left" -lt "$guard" ]; then
    record "{\"check\": \"skipped\", \"step\": \"$name\", \"reason\": \"time budget: ${left} s left, the step's guard is ${guard} s\"}"
    log "$name: skipped (${left} s left of the budget, guard ${guard} s)"
    return 0
  fi
  log "$name: $*"
  local t0=$SECONDS rc=0
  # A shell function of this script runs in a child bash (timeout runs programs), which gets the
  # functions and variables it needs exported (below); timeout signals the child's whole group.
  if declare -F "$1" > /dev/null; then set -- bash -c 'set -euo pipefail; "$@"' "$1" "$@"; fi
  timeout --kill-after=5 "$guard" "$@" > "$out/$name.out" 2> "$out/$name.err" || rc=$?
  grep '^{' "$out/$name.out" >> "$jsonl" || true
  if [ "$rc" != 0 ]; then
    failures=$((failures + 1))
    local why="exit status $rc"
    [ "$rc" = 124 ] && why="timed out after its guard of $guard s"
    printf '{"check": "%s", "failed": true, "why": "%s", "stderr_tail": %s}\n' "$name" "$why" \
      "$(tail -c 800 "$out/$name.err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" >> "$jsonl"
    log "$name FAILED: $why (see $out/$name.err)"
  fi
  report
  log "$name: $((SECONDS - t0)) s"
}

if [ "$mode" = dry ]; then
  reps=1; parity_batch=2; steps=3; views=1
  bf16_sizes=("vit-small 1" "vit-tiny 2" "vit-base 1"); f32_sizes=("vit-tiny 2")
  throughput=(--batch 4 --steps 2); guard_step=300; guard_long=600
  extraction=(--random-teacher mae-vit-base --block 1 --views 1 --batch 4)
else
  reps=5; parity_batch=8; steps=30; views=64
  bf16_sizes=("vit-small 256" "vit-tiny 256" "vit-base 128"); f32_sizes=("vit-small 256" "vit-tiny 256" "vit-base 128")
  throughput=(--batch 256 --steps 21); guard_step=60; guard_long=150
  extraction=(--random-teacher mae-vit-large --block 18 --views 64 --batch 64)
fi
has_torch=0
python3 -c 'import torch, timm' 2>/dev/null && has_torch=1
tdev=$([ "$device" = cpu ] && echo cpu || echo cuda)
candle_step() { # PRESET BATCH PRECISION
  step "step-candle-$1-$3" "$guard_step" "$train" bench step --device "$device" --preset "$1" --batch "$2" \
    --heads 6 --reps "$reps" --precision "$3" --step-only --json
}
torch_step() { # PRESET BATCH PRECISION [--compile]
  local name="step-torch-$1-$3"
  [ -n "${4:-}" ] && name="step-torchcompile-$1-$3"
  step "$name" "$([ -n "${4:-}" ] && echo "$guard_long" || echo "$guard_step")" python3 scripts/bench_torch_step.py \
    --device "$tdev" --preset "$1" --batch "$2" --heads 6 --iters "$reps" --precision "$3" ${4:+"$4"} --json
}

# ORT stage K: checks part K's sha256; where every part is there, unpacks ONNX Runtime's GPU build
# and times extraction through it (step 7).
ort_stage() {
  local k=$1 part="$stages/part-$1"
  if [ ! -f "$part/SHA256SUMS" ]; then
    record "{\"check\": \"ort_stage\", \"stage\": $k, \"present\": false, \"note\": \"no $part: prepared without scripts/setup.sh --ort-gpu, or not carried\"}"
    return 0
  fi
  local n present=() missing=() ok=true
  n=$(cat "$part/parts")
  for j in $(seq 1 "$n"); do
    local file
    file="$stages/part-$j/ort.tar.xz.$(printf %02d "$j")"
    if [ -f "$file" ]; then present+=("$j"); else missing+=("$j"); fi
  done
  (cd "$part" && grep " ort.tar.xz.$(printf %02d "$k")\$" SHA256SUMS | sha256sum -c --status) || ok=false
  record "{\"check\": \"ort_stage\", \"stage\": $k, \"of\": $n, \"part_sha256_ok\": $ok, \"parts_present\": [$(IFS=,; echo "${present[*]:-}")], \"parts_missing\": [$(IFS=,; echo "${missing[*]:-}")]}"
  [ "$ok" = true ] || { failures=$((failures + 1)); return 0; }
  [ "${#missing[@]}" = 0 ] || return 0
  local ortdir="$root/target/cuda/ort-gpu"
  rm -rf "$ortdir"; mkdir -p "$ortdir"
  local whole_ok=false
  : > "$ortdir.tar.xz"
  for j in $(seq 1 "$n"); do cat "$stages/part-$j/ort.tar.xz.$(printf %02d "$j")" >> "$ortdir.tar.xz"; done
  if
     (cd "$(dirname "$ortdir")" && grep " ort.tar.xz\$" "$part/SHA256SUMS" | sed "s| ort.tar.xz\$| $(basename "$ortdir").tar.xz|" | sha256sum -c --status) &&
     tar -C "$ortdir" -xJf "$ortdir.tar.xz"; then
    whole_ok=true
  fi
  rm -f "$ortdir.tar.xz"
  record "{\"check\": \"ort_unpacked\", \"whole_sha256_ok\": $whole_ok, \"files\": [$(ls "$ortdir" | sed 's/.*/"&"/' | paste -sd,)]}"
  [ "$whole_ok" = true ] || { failures=$((failures + 1)); return 0; }
  local lib libs
  libs=("$ortdir"/libonnxruntime.so.*)
  lib=${libs[0]}
  for encoding in ln1-int8 ln1; do
    step "extract-$encoding" "$guard_long" env ORT_DYLIB_PATH="$lib" "$extract" bench "${extraction[@]}" \
      --images "$data/photos" --encoding "$encoding" --device "$device"
  done
}

if [ -n "$stage" ]; then
  ort_stage "$stage"
  report --final
  [ "$failures" = 0 ]
  exit
fi

# The steps that are shell functions of this script (each runs in a child bash under `timeout`,
# which gets them and the variables they use exported).
# train_refused CHECK WANT [VAR=VALUE...] -- ARGS...: train must fail, its message satisfying WANT.
train_refused() {
  local check=$1 want=$2 vars=()
  shift 2
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  local err="$out/$check.txt"
  if env "${vars[@]}" "$train" --cache "$data/ln1.zarr" --images "$data/photos" --image-size 128 \
      --epochs 1 --warmup-epochs 0 --max-steps 1 --quiet --out "$out/$check" "$@" 2> "$err"; then
    echo "$check: train $* succeeded" >&2; return 1
  fi
  python3 - "$err" "$check" "$want" <<'PY'
import json, sys
message = open(sys.argv[1]).read().strip()
ok = bool(eval(sys.argv[3], {"message": message}))
print(json.dumps({"check": sys.argv[2], "message": message, "pass": ok}))
sys.exit(0 if ok else 1)
PY
}
torch_scripts_compile() { # where PyTorch is missing: the PyTorch scripts at least compile
  python3 -c 'import sys; [compile(open(f).read(), f, "exec") for f in sys.argv[1:]]' \
    scripts/bench_torch_step.py scripts/bench_torch_teacher.py &&
    echo '{"check": "pytorch", "skipped": "import torch, timm fails on this machine; its scripts compile"}'
}
# Training from the store on DEVICE and on the CPU, same command (step 4).
train_on() { # DEVICE ENCODING
  rm -rf "$out/train-$2-$1"
  "$train" --cache "$data/$2.zarr" --images "$data/photos" --student vit-tiny --image-size 128 \
    --epochs 100 --warmup-epochs 1 --batch 8 --base-lr 1e-3 --max-steps "$steps" \
    --precision f32 --no-jitter --device "$1" --quiet --out "$out/train-$2-$1" >/dev/null
}
compare_training() { # ENCODING
  train_on "$device" "$1"
  [ "$device" = cpu ] || train_on cpu "$1"
  python3 - "$out" "$device" "$1" <<'PY'
import json, sys
out, device, encoding = sys.argv[1:]
def losses(dev):
    return [json.loads(l)["loss"] for l in open(f"{out}/train-{encoding}-{dev}/metrics.jsonl") if l.strip()]
dev, cpu = losses(device), losses("cpu")
tail = lambda l: sum(l[-3:]) / len(l[-3:])
gap = max(abs(a - b) / abs(b) for a, b in zip(dev, cpu))
ok = len(dev) == len(cpu) and tail(dev) < dev[0] and tail(cpu) < cpu[0] and gap < 1e-2
print(json.dumps({"check": "train_from_store", "encoding": encoding, "device": device, "steps": len(dev),
                  "loss_first": dev[0], "loss_last3": tail(dev), "cpu_loss_first": cpu[0],
                  "cpu_loss_last3": tail(cpu), "max_step_rel_gap": gap, "pass": ok}))
sys.exit(0 if ok else 1)
PY
}
# Many GPUs (step 6): the hand-off under torchrun, and two ranks over NCCL vs one process.
torchrun_rendezvous() {
  python3 -m torch.distributed.run --standalone --nproc-per-node 4 --no-python \
    "$train" bench rendezvous --timeout 60 > "$out/rendezvous.jsonl"
  python3 - "$out/rendezvous.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
digests = {l["payload_blake3"] for l in lines}
ok = sorted(l["rank"] for l in lines) == [0, 1, 2, 3] and len(digests) == 1 and all(l["via_torch_store"] for l in lines)
print(json.dumps({"check": "torchrun_rendezvous", "ranks": len(lines), "one_payload": len(digests) == 1,
                  "via_torch_store": all(l["via_torch_store"] for l in lines), "pass": ok}))
sys.exit(0 if ok else 1)
PY
}
data_parallel() {
  local run=("$train" --cache "$data/ln1.zarr" --images "$data/photos" --student vit-tiny
    --image-size 128 --epochs 100 --warmup-epochs 1 --batch 16 --base-lr 1e-3 --max-steps "$steps"
    --precision f32 --no-jitter --quiet)
  rm -rf "$out/dp-1" "$out/dp-2"
  "${run[@]}" --device cuda:0 --out "$out/dp-1" >/dev/null
  python3 -m torch.distributed.run --standalone --nproc-per-node 2 --no-python "${run[@]}" --device cuda \
    --out "$out/dp-2" >/dev/null
  python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def run(name):
    return [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl") if l.strip()]
one, two = run("dp-1"), run("dp-2")
gap = lambda key: max(abs(a[key] - b[key]) / abs(b[key]) for a, b in zip(two, one))
rate = lambda r: statistics.median(m["views_per_s"] for m in r[3:])
efficiency = rate(two) / (2 * rate(one))
ok = len(one) == len(two) and gap("loss") < 1e-3 and gap("grad_norm") < 1e-3
print(json.dumps({"check": "data_parallel", "ranks": 2, "collective": "NCCL", "steps": len(two),
                  "max_step_loss_rel_gap": gap("loss"), "max_step_grad_norm_rel_gap": gap("grad_norm"),
                  "views_per_s_1gpu": rate(one), "views_per_s_2gpu": rate(two),
                  "scaling_efficiency": efficiency, "pass": ok}))
sys.exit(0 if ok else 1)
PY
}
export -f train_refused torch_scripts_compile train_on compare_training torchrun_rendezvous data_parallel
export out data train device steps

# 1. Parity.
step parity "$guard_step" "$train" bench parity --device "$device" --preset vit-tiny --batch "$parity_batch" --heads 6
# Dry run only: asking the CUDA build for a GPU where there is none fails with a sentence.
[ "$mode" = dry ] && step cuda_refused "$guard_step" train_refused cuda_refused_without_gpu \
  '"no usable CUDA device" in message or "built without CUDA support" in message' -- --device cuda:0

# 2. The student step in bf16, candle beside PyTorch eager and torch.compile.
for size in "${bf16_sizes[@]}"; do
  read -r preset batch <<< "$size"
  candle_step "$preset" "$batch" bf16
  if [ "$has_torch" = 1 ]; then
    torch_step "$preset" "$batch" bf16
    [ "$preset" = vit-small ] && torch_step "$preset" "$batch" bf16 --compile
  fi
done
[ "$has_torch" = 0 ] && step pytorch "$guard_step" torch_scripts_compile

# 3. Training from a real store vs synthetic targets.
step throughput-bf16 "$guard_long" "$train" bench throughput --cache "$data/ln1-int8.zarr" --images "$data/photos" \
  --device "$device" --precision bf16 "${throughput[@]}" --json

# 4. Training from the store: the same command on the device and on the CPU.
step train_from_store "$guard_step" compare_training ln1
step train_from_int8_store "$guard_step" compare_training ln1-int8

# 5. The student step in f32; torch.compile of the other sizes.
for size in "${f32_sizes[@]}"; do
  read -r preset batch <<< "$size"
  candle_step "$preset" "$batch" f32
  [ "$has_torch" = 1 ] && torch_step "$preset" "$batch" f32
done
if [ "$has_torch" = 1 ]; then
  for size in "${bf16_sizes[@]}"; do
    read -r preset batch <<< "$size"
    [ "$preset" = vit-small ] || torch_step "$preset" "$batch" bf16 --compile
  done
fi

# 6. Many GPUs: the hand-off under torchrun, and two ranks over NCCL vs one process.
[ "$has_torch" = 1 ] && step torchrun_rendezvous "$guard_step" torchrun_rendezvous
gpus=0
[ "$mode" = gpu ] && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "$gpus" -ge 2 ]; then
  step data_parallel "$guard_long" data_parallel
elif [ "$mode" = dry ]; then
  step launcher_refused "$guard_step" train_refused launcher_refused_without_mpi \
    '"built without MPI" in message and "2 processes" in message' \
    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29531 -- --device cpu --collective-timeout 5
else
  record "{\"check\": \"data_parallel\", \"skipped\": \"$gpus GPU(s) on this machine; the step needs 2\"}"
fi

# 7. ONNX Runtime's GPU build, part 1 (carried with this call); a dry run cuts the CPU build into
# small parts and plays every later call too, each as its own process, as the GPU machine would.
# The later parts wait aside and arrive one per call, as carries do.
if [ "$mode" = dry ]; then
  cut_stages "$cache/onnxruntime" "$stages" $((3 * 1024 * 1024)) $((3 * 1024 * 1024))
  rm -rf "$stages.later"; mkdir -p "$stages.later"
  for k in $(seq 2 "$(cat "$stages/parts")"); do mv "$stages/part-$k" "$stages.later/"; done
fi
ort_stage 1
if [ "$mode" = dry ] && [ -f "$stages/parts" ]; then
  for k in $(seq 2 "$(cat "$stages/parts")"); do
    log "stage $k (a later call, dry)"
    mv "$stages.later/part-$k" "$stages/"
    if "$0" --dry-run --stage "$k" --bin "$bin" --out "$out/stage-$k" --budget "$budget"; then
      record "{\"check\": \"dry_stage\", \"stage\": $k, \"pass\": true}"
    else
      failures=$((failures + 1))
      record "{\"check\": \"dry_stage\", \"stage\": $k, \"pass\": false}"
    fi
    grep -hE '"check": ?"(extraction|ort_stage|ort_unpacked)"' "$out/stage-$k/gpu_check.jsonl" >> "$jsonl" 2>/dev/null || true
  done
fi
report --final
[ "$failures" = 0 ]
