"""Writes Fashion-MNIST (Debian's dataset-fashion-mnist: the IDX files of Zalando's release,
MIT) as image folders for extract, train and `train probe`: IDX_DIR OUT_DIR.

  OUT_DIR/unlabelled/      the first 10,000 training images, flat (for distillation)
  OUT_DIR/probe-train/<c>/ the first 200 training images of each class (class = sub-folder)
  OUT_DIR/probe-test/<c>/  the first 100 test images of each class
  OUT_DIR/held-out/        the test images 5,000-5,499, flat (for `train eval`)

Each 28×28 grey image is written as it is (a grey PNG; the renderer converts it to RGB). The
test images are disjoint from every training image; the probe's training images are among the
unlabelled ones, as in a linear probe after self-supervised pre-training. Deterministic: the
same files on every machine."""
import gzip
import os
import struct
import sys

import numpy as np
from PIL import Image

CLASSES = ["0-tshirt-top", "1-trouser", "2-pullover", "3-dress", "4-coat", "5-sandal",
           "6-shirt", "7-sneaker", "8-bag", "9-ankle-boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        zero, dtype, dims = struct.unpack(">HBB", f.read(4))
        assert zero == 0 and dtype == 0x08, f"{path}: not an IDX ubyte file"
        shape = struct.unpack(">" + "I" * dims, f.read(4 * dims))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def save(pixels, folder, name):
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(pixels, "L").save(os.path.join(folder, name))


src, out = sys.argv[1], sys.argv[2]
train_x = read_idx(os.path.join(src, "train-images-idx3-ubyte.gz"))
train_y = read_idx(os.path.join(src, "train-labels-idx1-ubyte.gz"))
test_x = read_idx(os.path.join(src, "t10k-images-idx3-ubyte.gz"))
test_y = read_idx(os.path.join(src, "t10k-labels-idx1-ubyte.gz"))
assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)

for i in range(10000):
    save(train_x[i], os.path.join(out, "unlabelled"), f"train_{i:05d}.png")
for split, xs, ys, per_class in [("probe-train", train_x, train_y, 200),
                                 ("probe-test", test_x, test_y, 100)]:
    counts = [0] * 10
    for i, (x, y) in enumerate(zip(xs, ys)):
        if counts[y] < per_class:
            counts[y] += 1
            prefix = "train" if split == "probe-train" else "test"
            save(x, os.path.join(out, split, CLASSES[y]), f"{prefix}_{i:05d}.png")
for i in range(5000, 5500):
    save(test_x[i], os.path.join(out, "held-out"), f"test_{i:05d}.png")
print(f"fashion-mnist: 10,000 unlabelled, 2,000 probe-train, 1,000 probe-test, 500 held-out "
      f"images under {out}")
