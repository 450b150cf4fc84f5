#!/usr/bin/env bash
# Validates and times the GPU paths in one call, on a GPU machine that has no network: it only
# runs what was built and prepared elsewhere (scripts/build-cuda.sh, `--prepare`).
#
#   scripts/gpu_check.sh --prepare              here: build the check's data (real DINOv2-S
#                                               `ln1` and `ln1-int8` stores of the bundled
#                                               photos) into
#                                               target/cuda/gpu-check/
#   scripts/gpu_check.sh                        on the GPU machine, with target/cuda/carry (the
#                                               xz-compressed binaries, unpacked into
#                                               target/cuda/dist) and target/cuda/gpu-check
#                                               carried there
#   scripts/gpu_check.sh --dry-run              the same steps at tiny sizes on the CPU (CI)
#
# Steps, each one JSON line in $OUT/gpu_check.jsonl, all of them in $OUT/gpu_check.json:
#   1. step parity: the CUDA step vs the CPU step, f32 (1e-4) and bf16 (2e-2), loss and every
#      gradient (device_check);
#   2. training from the store on the device vs the CPU, same seed and command: both losses
#      fall, and per step they agree (train), from the `ln1` store and from the `ln1-int8` one
#      (its int8 rows decoded on the device);
#   3. the student step for vit-tiny/small/base at batch 256/256/128 in f32 and bf16, candle vs
#      PyTorch eager and torch.compile on the same model, batch and precision (student_speed,
#      bench_torch_step.py);
#   4. training from a store vs synthetic targets: views/s and the data-wait share (bench_train);
#   5. the teacher: ONNX Runtime's CUDA provider is not carried (libonnxruntime_providers_cuda.so
#      alone is 284 MB, over the 64 MiB a call carries), so the exported teacher graph's
#      computation (MAE ViT-L to block 18, maps included) runs in PyTorch for the extraction
#      rate (bench_torch_teacher.py);
#   6. many GPUs: where PyTorch is, the start-up hand-off of 4 ranks under a real torchrun (its
#      store on MASTER_PORT; no GPU needed: rendezvous_check); where the machine has two GPUs or
#      more, `train` on 2 ranks over NCCL (torchrun) vs
#      one process, the same command line: per-step losses and gradient norms, and the scaling
#      efficiency (2-GPU views/s ÷ twice the 1-GPU views/s). In a dry run: the CUDA build,
#      started as rank 0 of 2 on the CPU, refuses with a sentence (its CPU collective is MPI,
#      which the GPU build leaves out).
# The PyTorch steps run where `import torch, timm` works and are recorded as skipped elsewhere.
# Options: --bin DIR (binaries, default target/cuda/dist; a cargo profile folder such as
# target/debug works too), --out DIR (default $OUT, else
# runs/gpu_check), --device D (default cuda:0; cpu with --dry-run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode=gpu
bin="$root/target/cuda/dist"
out="${OUT:-$root/runs/gpu_check}"
device=cuda:0
data="$root/target/cuda/gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare ;;
    --dry-run) mode=dry; device=cpu ;;
    --bin) bin="$2"; shift ;;
    --out) out="$2"; shift ;;
    --device) device="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
log() { printf 'gpu_check: %s\n' "$*" >&2; }

if [ "$mode" = prepare ]; then
  cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
  extract="$root/target/release/extract"
  [ -x "$extract" ] || extract="$root/target/debug/extract"
  [ -x "$extract" ] || { log "no extract binary: run cargo build --release --bins first"; exit 1; }
  rm -rf "$data"
  mkdir -p "$data"
  cp -r "$cache/photos" "$data/photos"
  for encoding in ln1 ln1-int8; do
    "$extract" --teacher "$cache/teachers/vit_s_focus.onnx" --config configs/teachers/dinov2-small.toml \
      --images "$data/photos" --views 4 --encoding "$encoding" --out "$data/$encoding.zarr" --quiet >/dev/null
  done
  log "prepared $data ($(du -sh "$data" | cut -f1)): carry it with $bin"
  exit 0
fi

[ -d "$data/ln1.zarr" ] && [ -d "$data/ln1-int8.zarr" ] || { log "no check data in $data: run scripts/gpu_check.sh --prepare first"; exit 1; }
# The binaries as carried: compressed, next to the dist folder.
carry="$root/target/cuda/carry"
if [ ! -x "$bin/train" ] && [ -d "$carry" ] && [ "$bin" = "$root/target/cuda/dist" ]; then
  mkdir -p "$bin"
  for packed in "$carry"/*.xz; do
    unpacked="$bin/$(basename "$packed" .xz)"
    xz -dc "$packed" > "$unpacked" && chmod +x "$unpacked"
  done
  log "unpacked $(ls "$carry" | wc -l) binaries from $carry into $bin"
fi
# A binary of $bin: there (dist/), or in its examples/ (a cargo profile folder such as target/debug).
exe() { if [ -x "$bin/$1" ]; then echo "$bin/$1"; else echo "$bin/examples/$1"; fi; }
for b in train device_check student_speed bench_train rendezvous_check; do
  [ -x "$(exe $b)" ] || { log "missing $b in $bin: build it with scripts/build-cuda.sh"; exit 1; }
done
mkdir -p "$out"
jsonl="$out/gpu_check.jsonl"
: > "$jsonl"
began=$(date +%s)

# The CUDA runtime libraries the binaries need (cuBLAS, cuRAND, NVRTC, cudart, NCCL): PyTorch's
# nvidia-* wheels on a GPU machine; in a dry run without them, the build's stubs, so that the
# very binaries that travel to the GPU are the ones checked here on the CPU.
libs="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        if any(n in os.path.basename(lib) for n in ("cublas", "curand", "nvrtc", "cudart", "nccl")):
            dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)"
if [ -z "$libs" ] && [ "$mode" = dry ] && [ -d "$bin/../stubs/lib" ]; then
  # The stubs, and the toolkit's real libcudart (it loads the driver only when first called).
  libs="$(cd "$bin/../stubs/lib" && pwd):${TINYMIM_CACHE:-$root/.cache/tinymim}/cuda/13.0/lib"
fi
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 - "$jsonl" "$mode" "$device" "$LD_LIBRARY_PATH" <<'PY'
import json, os, subprocess, sys
jsonl, mode, device, libs = sys.argv[1:]
gpu = None
if mode == "gpu":
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True)
        gpu = smi.stdout.strip() if smi.returncode == 0 else f"nvidia-smi failed: {smi.stderr.strip()}"
    except OSError as e:
        gpu = f"nvidia-smi not runnable: {e}"
line = {"check": "environment", "mode": mode, "device": device, "cores": os.cpu_count(),
        "gpu": gpu, "ld_library_path": libs}
open(jsonl, "a").write(json.dumps(line) + "\n")
PY

# Runs a step that prints JSON lines; a failing step is recorded and the script goes on, so one
# failure does not cost the other figures (the exit status says whether any failed).
failures=0
step() {
  local name=$1; shift
  log "$name: $*"
  local t0=$SECONDS
  local ok=1
  "$@" > "$out/$name.out" 2> "$out/$name.err" || ok=0
  grep '^{' "$out/$name.out" >> "$jsonl" || true
  if [ "$ok" = 0 ]; then
    failures=$((failures + 1))
    printf '{"check": "%s", "failed": true, "stderr_tail": %s}\n' "$name" \
      "$(tail -c 800 "$out/$name.err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" >> "$jsonl"
    log "$name FAILED (see $out/$name.err)"
  fi
  log "$name: $((SECONDS - t0)) s"
}

if [ "$mode" = dry ]; then
  sizes=("vit-tiny 2" "vit-small 1" "vit-base 1"); reps=1; parity_batch=2
  steps=3; bench=(--steps 2 --batch 2 --views 1); teacher=(--arch vit-small --block 2 --batch 2 --iters 1 --device cpu)
else
  sizes=("vit-tiny 256" "vit-small 256" "vit-base 128"); reps=5; parity_batch=8
  steps=30; bench=(--steps 21 --batch 64 --views 8); teacher=(--arch vit-large --block 18 --batch 64 --iters 10 --device "$device")
fi

# 1. Step parity.
step parity "$(exe device_check)" --device "$device" --preset vit-tiny --batch "$parity_batch" --heads 6

# `train` on the check data where it must fail with a sentence: CHECK names the figure, WANT is a
# Python condition on its `message`; then VAR=VALUE assignments, `--`, and the run's arguments.
train_refused() {
  local check=$1 want=$2 vars=()
  shift 2
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  local err="$out/$check.txt"
  if env "${vars[@]}" "$(exe train)" --cache "$data/ln1.zarr" --images "$data/photos" --image-size 256 \
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
# 1b. Dry run only: asking this build for a GPU where there is none fails with a sentence.
[ "$mode" = dry ] && step cuda_refused train_refused cuda_refused_without_gpu \
  '"no usable CUDA device" in message or "built without CUDA support" in message' -- --device cuda:0

# 2. Training from a store: the same command on the device and on the CPU.
train_on() {
  local dev=$1 encoding=$2
  rm -rf "$out/train-$encoding-$dev"
  "$(exe train)" --cache "$data/$encoding.zarr" --images "$data/photos" --student vit-tiny \
    --image-size 256 --epochs 100 --warmup-epochs 1 --batch 8 --base-lr 1e-3 --max-steps "$steps" \
    --precision f32 --no-jitter --device "$dev" --quiet --out "$out/train-$encoding-$dev" >/dev/null
}
compare_training() {
  local encoding=$1
  train_on "$device" "$encoding"
  [ "$device" = cpu ] || train_on cpu "$encoding"
  python3 - "$out" "$device" "$encoding" <<'PY'
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
step train_from_store compare_training ln1
step train_from_int8_store compare_training ln1-int8

# 3. The student step, candle vs PyTorch, same model, batch and precision.
has_torch=0
python3 -c 'import torch, timm' 2>/dev/null && has_torch=1
for size in "${sizes[@]}"; do
  read -r preset batch <<< "$size"
  for precision in f32 bf16; do
    step "step-candle-$preset-$precision" "$(exe student_speed)" --device "$device" --preset "$preset" \
      --batch "$batch" --heads 6 --reps "$reps" --precision "$precision" --json
    if [ "$has_torch" = 1 ]; then
      tdev=$([ "$device" = cpu ] && echo cpu || echo cuda)
      step "step-torch-$preset-$precision" python3 scripts/bench_torch_step.py --device "$tdev" \
        --preset "$preset" --batch "$batch" --heads 6 --iters "$reps" --precision "$precision" --json
      # torch.compile costs a minute or more per model: bf16 only (the CUDA default), and only
      # while the call is well inside its 10 minutes.
      if [ "$precision" = bf16 ] && [ $(( $(date +%s) - began )) -lt 300 ]; then
        step "step-torchcompile-$preset-$precision" timeout 150 python3 scripts/bench_torch_step.py \
          --device "$tdev" --preset "$preset" --batch "$batch" --heads 6 --iters "$reps" \
          --precision "$precision" --compile --json
      elif [ "$precision" = bf16 ]; then
        echo "{\"check\": \"student_step_skipped\", \"engine\": \"pytorch-compile\", \"preset\": \"$preset\", \"reason\": \"time budget\"}" >> "$jsonl"
      fi
    fi
  done
done
if [ "$has_torch" = 0 ]; then
  torch_scripts_compile() {
    python3 -c 'import sys; [compile(open(f).read(), f, "exec") for f in sys.argv[1:]]' \
      scripts/bench_torch_step.py scripts/bench_torch_teacher.py &&
      echo '{"check": "pytorch", "skipped": "import torch, timm fails on this machine; its scripts compile"}'
  }
  step pytorch torch_scripts_compile
fi

# 4. Training from a store vs synthetic targets.
for precision in f32 bf16; do
  step "throughput-$precision" "$(exe bench_train)" --device "$device" --precision "$precision" "${bench[@]}" --json
done

# 5. The teacher's computation on the GPU (PyTorch; see the header).
if [ "$has_torch" = 1 ]; then
  for precision in f32 bf16; do
    step "teacher-$precision" python3 scripts/bench_torch_teacher.py "${teacher[@]}" --precision "$precision" --json
  done
fi

# 6. Many GPUs: two ranks over NCCL vs one process, the same command line.
gpus=0
[ "$mode" = gpu ] && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
data_parallel() {
  local run=("$(exe train)" --cache "$data/ln1.zarr" --images "$data/photos" --student vit-tiny
    --image-size 256 --epochs 100 --warmup-epochs 1 --batch 16 --base-lr 1e-3 --max-steps "$steps"
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
torchrun_rendezvous() {
  python3 -m torch.distributed.run --standalone --nproc-per-node 4 --no-python \
    "$(exe rendezvous_check)" --timeout 60 > "$out/rendezvous.jsonl"
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
[ "$has_torch" = 1 ] && step torchrun_rendezvous torchrun_rendezvous
if [ "$gpus" -ge 2 ]; then
  step data_parallel data_parallel
elif [ "$mode" = dry ]; then
  step launcher_refused train_refused launcher_refused_without_mpi \
    '"built without MPI" in message and "2 processes" in message' \
    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29531 -- --device cpu --collective-timeout 5
else
  echo "{\"check\": \"data_parallel\", \"skipped\": \"$gpus GPU(s) on this machine; the step needs 2\"}" >> "$jsonl"
fi

python3 - "$jsonl" "$out/gpu_check.json" "$failures" "$(( $(date +%s) - began ))" <<'PY'
import json, sys
jsonl, path, failures, wall = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = [json.loads(l) for l in open(jsonl) if l.strip()]
steps = {}
for l in lines:
    if l.get("check") == "student_step":
        steps.setdefault((l["preset"], l["batch"], l["precision"]), {})[l["engine"]] = l["images_per_s"]
ratios = [{"preset": p, "batch": b, "precision": pr, "images_per_s": e,
           "candle_vs_pytorch_eager": e["candle"] / e["pytorch-eager"] if "pytorch-eager" in e else None,
           "candle_vs_torch_compile": e["candle"] / e["pytorch-compile"] if "pytorch-compile" in e else None}
          for (p, b, pr), e in sorted(steps.items())]
report = {"figures": lines, "step_ratios": ratios, "failed_steps": failures, "wall_s": wall}
json.dump(report, open(path, "w"), indent=1)
for r in ratios:
    print(f"{r['preset']:<10} b{r['batch']:<4} {r['precision']:<5} candle {r['images_per_s']['candle']:9.1f} img/s"
          f"  vs eager {r['candle_vs_pytorch_eager'] or float('nan'):.2f}  vs compile {r['candle_vs_torch_compile'] or float('nan'):.2f}")
print(f"gpu_check: {len(lines)} figures, {failures} failed steps, {wall} s; wrote {path}")
PY
[ "$failures" = 0 ]
