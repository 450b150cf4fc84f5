"""Writes a labelled image folder (class = sub-folder) for `train probe` from scikit-learn's
bundled handwritten digits: DIGITS_CSV_GZ OUT_DIR PER_CLASS. Each 8×8 digit (0–16 grey levels)
is written as a 64×64 RGB PNG (nearest-neighbour upscaling, white digit on black), the first
PER_CLASS images of each class in file order, so the folder is the same on every machine."""
import csv
import gzip
import os
import sys

import numpy as np
from PIL import Image

src, out, per_class = sys.argv[1], sys.argv[2], int(sys.argv[3])
counts = {}
with gzip.open(src, "rt") as f:
    for row in csv.reader(f):
        pixels, label = [float(v) for v in row[:64]], int(float(row[64]))
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        grey = (np.array(pixels).reshape(8, 8) * (255.0 / 16.0)).round().astype(np.uint8)
        img = Image.fromarray(grey, "L").resize((64, 64), Image.NEAREST).convert("RGB")
        folder = os.path.join(out, str(label))
        os.makedirs(folder, exist_ok=True)
        img.save(os.path.join(folder, f"{label}_{counts[label]:03d}.png"))
print(f"probe set: {sum(counts.values())} images in {len(counts)} classes under {out}")
