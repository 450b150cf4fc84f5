"""The quickstart's summary: OUT_DIR WALL_SECONDS. States in words whether the distilled student
beat its random-initialised twin, with the teacher and raw pixels beside it."""
import json
import os
import sys

out, wall = sys.argv[1], int(sys.argv[2])
ex = json.loads(open(os.path.join(out, "extract.json")).read().strip().splitlines()[-1])
steps = [json.loads(l) for l in open(os.path.join(out, "student", "metrics.jsonl")) if l.strip()]
ev = json.load(open(os.path.join(out, "eval.json")))
probe = json.load(open(os.path.join(out, "probe.json")))
size = sum(os.path.getsize(os.path.join(d, f))
           for d, _, fs in os.walk(os.path.join(out, "relations.zarr")) for f in fs)
rows = probe["rows"]


def row(model, features, pooling):
    return next(r for r in rows if r["model"] == model and r["features"] == features
                and r["pooling"] == pooling)


# The representation the relation loss shapes: the tokens entering the adaptive block.
student = row("student", "adaptive-block input", "mean patches")
twin = row("random-init twin", "adaptive-block input", "mean patches")
teachers = [r for r in rows if r["model"] == "teacher"]
t_final = [r for r in teachers if r["pooling"] == "mean patches"][-1]
t_best = max(teachers, key=lambda r: r["knn_top1"])
pixels = next(r for r in rows if r["model"] == "raw pixels")
vps = sum(r["views_per_s"] for r in steps[1:]) / max(1, len(steps) - 1)
pct = lambda x: f"{100 * x:.1f} %"

print("== summary")
print(f"store        {out}/relations.zarr: {size / 1e6:.1f} MB, {ex['views_written']} views, "
      f"{ex['bytes_per_view'] / 1e3:.0f} kB/view ({ex['encoding']}), {ex['views_per_s']:.1f} views/s on {ex['provider']}")
print(f"train        {len(steps)} steps, {vps:.1f} views/s, loss {steps[0]['loss']:.3f} -> "
      f"{sum(r['loss'] for r in steps[-3:]) / len(steps[-3:]):.3f} (mean of the last 3 steps)")
print(f"held-out     relation loss on {ev['views']} unseen views: student {ev['student']['loss']:.3f}, "
      f"random-init twin {ev['twin']['loss']:.3f} ({100 * ev['student']['loss'] / ev['twin']['loss']:.0f} % of the twin's)")
print(f"probe        {probe['train']} train / {probe['test']} test images, 10 classes; "
      f"k-NN / linear top-1, mean-pooled tokens entering the adaptive block:")
print(f"  student           {pct(student['knn_top1']):>7} / {pct(student['linear_top1'])}")
print(f"  random-init twin  {pct(twin['knn_top1']):>7} / {pct(twin['linear_top1'])}")
print(f"  teacher, final    {pct(t_final['knn_top1']):>7} / {pct(t_final['linear_top1'])}   ({t_final['features']})")
print(f"  teacher, best     {pct(t_best['knn_top1']):>7} / {pct(t_best['linear_top1'])}   ({t_best['features']}, {t_best['pooling']})")
print(f"  raw pixels        {pct(pixels['knn_top1']):>7} / {pct(pixels['linear_top1'])}")
gain = student["knn_top1"] - twin["knn_top1"]
if gain >= 0.03:
    print(f"verdict      distillation helped: the student beats its random-init twin by "
          f"{100 * gain:.1f} points of k-NN top-1 ({100 * (student['linear_top1'] - twin['linear_top1']):+.1f} linear) "
          f"on images it never saw")
else:
    print(f"verdict      this run does not show transfer: the student is {100 * gain:+.1f} points of "
          f"k-NN top-1 from its random-init twin; train longer or on more views (QUICKSTART_IMAGES, "
          f"QUICKSTART_VIEWS) before reading its scores")
print(f"outputs      {out}/student/model.safetensors, {out}/loss.png, {out}/probe.txt, {out}/eval.txt")
print(f"wall time    {wall} s after the build")
