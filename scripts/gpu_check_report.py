"""Summarises scripts/gpu_check.sh's figures so far: reads the JSON lines of gpu_check.jsonl and
rewrites gpu_check.json (every figure, the candle/PyTorch step ratios, the failed and skipped
steps, the wall time). gpu_check.sh runs it after every step, so a call cut at its time limit
still leaves a complete report of what it finished.

    python3 scripts/gpu_check_report.py OUT_DIR WALL_SECONDS [--final]
"""
import json
import os
import sys

out, wall = sys.argv[1], int(sys.argv[2])
final = "--final" in sys.argv[3:]
lines = []
for line in open(os.path.join(out, "gpu_check.jsonl")):
    line = line.strip()
    if line:
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            lines.append({"check": "unparsed_line", "text": line[:400]})

steps = {}
for l in lines:
    if l.get("check") == "student_step" and "images_per_s" in l:
        steps.setdefault((l["preset"], l["batch"], l["precision"]), {})[l["engine"]] = l["images_per_s"]
ratio = lambda e, other: e["candle"] / e[other] if "candle" in e and other in e else None
ratios = [{"preset": p, "batch": b, "precision": pr, "images_per_s": e,
           "candle_vs_pytorch_eager": ratio(e, "pytorch-eager"),
           "candle_vs_torch_compile": ratio(e, "pytorch-compile")}
          for (p, b, pr), e in sorted(steps.items())]
failed = [l["check"] for l in lines if l.get("failed")]
skipped = [l for l in lines if l.get("check") == "skipped"]
report = {"figures": lines, "step_ratios": ratios, "failed_steps": failed,
          "skipped_steps": skipped, "wall_s": wall, "complete": final}
tmp = os.path.join(out, "gpu_check.json.tmp")
with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
os.replace(tmp, os.path.join(out, "gpu_check.json"))

if final:
    for r in ratios:
        fmt = lambda x: "  n/a" if x is None else f"{x:5.2f}"
        candle = r["images_per_s"].get("candle")
        print(f"{r['preset']:<10} b{r['batch']:<4} {r['precision']:<5} candle "
              f"{'n/a' if candle is None else f'{candle:9.1f}'} img/s  vs eager "
              f"{fmt(r['candle_vs_pytorch_eager'])}  vs compile {fmt(r['candle_vs_torch_compile'])}")
    print(f"gpu_check: {len(lines)} figures, {len(failed)} failed steps, {len(skipped)} skipped, "
          f"{wall} s; wrote {os.path.join(out, 'gpu_check.json')}")
