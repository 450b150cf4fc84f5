"""Plots the relation loss of a training run: METRICS_JSONL OUT_PNG. Reads one JSON object per
line (`train` writes step, loss and, when present, loss_qk and loss_vv) and draws loss (and a trailing
mean over a tenth of the run) against step."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(src) if line.strip()]
steps = [r["step"] for r in rows]
fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
loss = [r["loss"] for r in rows]
ax.plot(steps, loss, label="L = L_QK + L_VV", lw=1, alpha=0.5)
window = max(1, len(loss) // 10)
smooth = [sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1]) for i in range(len(loss))]
ax.plot(steps, smooth, label=f"mean of the last {window} steps", lw=2)
for part in ("loss_qk", "loss_vv"):
    if all(r.get(part) is not None for r in rows):
        ax.plot(steps, [r[part] for r in rows], label=part.replace("loss_", "L_").upper(), lw=1)
ax.set_xlabel("optimiser step")
ax.set_ylabel("relation KL")
ax.set_title("tinymim: student relation loss")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out)
print(f"loss plot: {out}")
