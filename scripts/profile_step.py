"""Where one candle distillation step's time goes on the CPU: samples the step alone
(`train bench step --step-only`) with `perf record` (software clock, every thread) and sums the
samples' own functions into the categories `bench_torch_step.py --profile` gives PyTorch's ops.

    python3 scripts/profile_step.py [--bin target/release/train]
        [--preset vit-tiny] [--batch 8] [--heads 12] [--reps 3] [--json]

Needs `perf` (Debian's linux-perf). perf's shares are of CPU time on every thread (waiting
threads included), torch.profiler's of the calling thread's wall time per op: compare the
categories' order and size, not their second digit.
"""
import argparse
import json
import re
import subprocess
import tempfile

CATEGORIES = [
    ("matrix products", r"gemm"),
    # The fused kernels run inlined into the worker pool's task runner (tinymim_train::pool),
    # AdamW's in-place passes among them, so this category holds those too.
    ("softmax, GELU, LayerNorm, loss", r"tinymim_train::model::fused|tinymim_train::pool|"
                                       r"expf|erff|erfc|erf_f32|logf|__log"),
    ("AdamW", r"tinymim_train::optim"),
    ("copies and allocation", r"memset|memmove|memcpy|copy_strided|copy2d|clear_page|page_fault|"
                              r"do_anonymous_page|alloc|malloc|free|_int_|zeroed|munmap|mmap"),
    ("element-wise and reductions", r"candle_core::cpu_backend|candle_core::cpu::|binary_map|unary_map|"
                                    r"vec_dot|candle_core::tensor"),
    ("threads: waiting and hand-off", r"BarrierPool|BarrierGuard|__rust_begin_short_backtrace|"
                                      r"call_trampoline|sched|yield|futex|spin|rayon|"
                                      r"finish_task_switch|__schedule|syscall|entry_SYSCALL"),
]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--bin", default="target/release/train")
parser.add_argument("--preset", default="vit-tiny")
parser.add_argument("--batch", default="8")
parser.add_argument("--heads", default="12")
parser.add_argument("--reps", default="3")
parser.add_argument("--json", action="store_true")
args = parser.parse_args()

with tempfile.NamedTemporaryFile(suffix=".perf") as data:
    subprocess.run(["perf", "record", "-q", "-F", "997", "-o", data.name, "--", args.bin,
                    "bench", "step", "--device", "cpu", "--step-only", "--preset", args.preset, "--batch", args.batch,
                    "--heads", args.heads, "--reps", args.reps], check=True,
                   stdout=subprocess.DEVNULL)
    report = subprocess.run(["perf", "report", "-i", data.name, "--no-children", "--sort", "symbol",
                             "--stdio", "-q"], check=True, capture_output=True, text=True).stdout

totals = {name: 0.0 for name, _ in CATEGORIES}
totals["other"] = 0.0
for line in report.splitlines():
    m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(.*)", line)
    if not m:
        continue
    share, symbol = float(m.group(1)) / 100, m.group(2)
    name = next((n for n, pattern in CATEGORIES if re.search(pattern, symbol)), "other")
    totals[name] += share
shares = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
if args.json:
    print(json.dumps({"check": "step_profile", "engine": "candle", "preset": args.preset,
                      "batch": int(args.batch), "relation_heads": int(args.heads),
                      "profile_share": shares}))
else:
    print(f"candle step profile ({args.preset}, batch {args.batch}, relation heads {args.heads}; "
          f"perf samples on every thread):")
    for name, share in shares.items():
        print(f"  {name:<40} {100 * share:5.1f} %")
