"""Prints the transfer benchmark's tables (markdown) from the run folders bench_transfer.sh
wrote: OUT_DIR. Every student beside its random-initialised twin, the teacher and raw pixels."""
import json
import os
import sys

out = sys.argv[1]
runs = sorted(d for d in os.listdir(out) if os.path.isfile(os.path.join(out, d, "probe.json")))
teacher = None
print("| run | student | train s | views | held-out L: student / twin (ratio) | best student k-NN (features) | twin, same features | gap to teacher best closed | linear: student / twin |")
print("|---|---|---|---|---|---|---|---|---|")
details = []
for name in runs:
    d = os.path.join(out, name)
    probe = json.load(open(os.path.join(d, "probe.json")))
    ev = json.load(open(os.path.join(d, "eval.json")))
    times = json.load(open(os.path.join(d, "times.json")))
    cfg = json.load(open(os.path.join(d, "config.json")))
    steps = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()]
    rows = probe["rows"]
    if any(r["model"] == "teacher" for r in rows):
        teacher = rows
    pick = lambda m, f, p: next(r for r in rows if r["model"] == m and r["features"] == f and r["pooling"] == p)
    student = max((r for r in rows if r["model"] == "student"), key=lambda r: r["knn_top1"])
    twin = pick("random-init twin", student["features"], student["pooling"])
    best_twin = max((r for r in rows if r["model"] == "random-init twin"), key=lambda r: r["knn_top1"])
    views = len(steps) * 64
    gap = ""
    if teacher:
        tbest = max((r for r in teacher if r["model"] == "teacher"), key=lambda r: r["knn_top1"])
        if tbest["knn_top1"] > best_twin["knn_top1"]:
            gap = f"{100 * (student['knn_top1'] - best_twin['knn_top1']) / (tbest['knn_top1'] - best_twin['knn_top1']):.0f} %"
    arch = f"D{cfg['dim']}×{cfg['depth']}"
    print(f"| {name} | {arch} | {times['train_s']:.0f} | {views} | {ev['student']['loss']:.3f} / {ev['twin']['loss']:.3f} ({100 * ev['student']['loss'] / ev['twin']['loss']:.0f} %) "
          f"| {100 * student['knn_top1']:.1f} % ({student['features']}, {student['pooling']}) | {100 * twin['knn_top1']:.1f} % (best twin {100 * best_twin['knn_top1']:.1f} %) | {gap} "
          f"| {100 * student['linear_top1']:.1f} / {100 * twin['linear_top1']:.1f} % |")
    details.append((name, rows))

print()
print("| run | features | pooling | k-NN student | k-NN twin | linear student | linear twin |")
print("|---|---|---|---|---|---|---|")
for name, rows in details:
    for r in rows:
        if r["model"] != "student":
            continue
        t = next(x for x in rows if x["model"] == "random-init twin" and x["features"] == r["features"] and x["pooling"] == r["pooling"])
        print(f"| {name} | {r['features']} | {r['pooling']} | {100 * r['knn_top1']:.1f} | {100 * t['knn_top1']:.1f} | {100 * r['linear_top1']:.1f} | {100 * t['linear_top1']:.1f} |")
if teacher:
    print()
    print("| teacher / floor | features | pooling | k-NN | linear |")
    print("|---|---|---|---|---|")
    for r in teacher:
        if r["model"] in ("teacher", "raw pixels"):
            print(f"| {r['model']} | {r['features']} | {r['pooling']} | {100 * r['knn_top1']:.1f} | {100 * r['linear_top1']:.1f} |")
