#!/usr/bin/env bash
# Idempotent set-up for poac: installs libtorch (from PyPI's torch wheel), the ONNX Runtime shared library,
# a small Python venv with the test oracles (the `onnx` checker, numpy, Pillow), and the Fashion-MNIST dataset, all into
# a cache outside the clone ($POAC_CACHE, default ~/.cache/poac). A second run downloads nothing.
# It also writes .cargo/config.toml (git-ignored) so that plain `cargo build` / `cargo test` find them.
set -euo pipefail

TORCH_VERSION=2.13.0          # the version tch 0.26 pins
CUDART_VERSION=13.0.96        # libtorch_cpu.so of the 2.13 wheel links libcudart.so.13 ...
CUPTI_VERSION=13.0.85         # ... and libcupti.so.13, even on CPU
ORT_VERSION=1.31.1            # ort 2.0.0-rc.15 with api-31
ONNX_VERSION=1.23.2
PILLOW_VERSION=12.1.1        # test oracle of the bicubic crops (torchvision resizes PIL images)

CACHE="${POAC_CACHE:-$HOME/.cache/poac}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$CACHE"
say() { printf '[setup] %s\n' "$*" >&2; }
# Unpacks Debian package $1 into folder $2 (apt-get download, after apt-get update if the lists are stale).
unpack_deb() {
  local debs; debs="$(mktemp -d)"
  ( cd "$debs" && apt-get download "$1" >/dev/null 2>&1 ) || {
    say "apt-get download $1 failed; trying apt-get update first"
    ( cd "$debs" && (apt-get update >/dev/null 2>&1 || sudo apt-get update >/dev/null 2>&1) && apt-get download "$1" >/dev/null )
  }
  dpkg-deb -x "$debs/$1"_*.deb "$2"
  rm -rf "$debs"
}

# --- Python venv with the test oracles: the ONNX checker, numpy, Pillow -----------------------------------------
VENV="$CACHE/venv"
if [ ! -f "$VENV/.done-onnx-$ONNX_VERSION" ]; then
  say "creating venv with onnx==$ONNX_VERSION in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "onnx==$ONNX_VERSION" numpy
  touch "$VENV/.done-onnx-$ONNX_VERSION"
fi
PY="$VENV/bin/python"
if [ ! -f "$VENV/.done-pillow-$PILLOW_VERSION" ]; then
  say "installing pillow==$PILLOW_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pillow==$PILLOW_VERSION"
  touch "$VENV/.done-pillow-$PILLOW_VERSION"
fi

# --- libtorch from the torch wheel (no pytorch.org) -------------------------------------------------------------
LIBTORCH="$CACHE/libtorch-$TORCH_VERSION/torch"
if [ ! -f "$LIBTORCH/.done" ]; then
  say "fetching torch==$TORCH_VERSION wheel from PyPI (~530 MB, once)"
  WHEELS="$CACHE/wheels"
  mkdir -p "$WHEELS"
  ( cd "$WHEELS" && "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION" )
  say "extracting libtorch"
  rm -rf "$CACHE/libtorch-$TORCH_VERSION.tmp"
  "$PY" - "$WHEELS" "$CACHE/libtorch-$TORCH_VERSION.tmp" "$TORCH_VERSION" <<'PYEOF'
import glob, os, sys, zipfile
wheels, out, version = sys.argv[1:]
keep_libs = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"}
torch_whl = glob.glob(os.path.join(wheels, f"torch-{version}-*.whl"))[0]
with zipfile.ZipFile(torch_whl) as z:
    for name in z.namelist():
        if name.startswith("torch/include/") or (name.startswith("torch/lib/") and os.path.basename(name) in keep_libs):
            z.extract(name, out)
for pattern, lib in [("nvidia_cuda_runtime-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")]:
    with zipfile.ZipFile(glob.glob(os.path.join(wheels, pattern))[0]) as z:
        member = next(n for n in z.namelist() if n.endswith("/" + lib))
        with z.open(member) as src, open(os.path.join(out, "torch", "lib", lib), "wb") as dst:
            dst.write(src.read())
with open(os.path.join(out, "torch", "build-version"), "w") as f:
    f.write(version + "\n")
PYEOF
  rm -rf "$CACHE/libtorch-$TORCH_VERSION"
  mv "$CACHE/libtorch-$TORCH_VERSION.tmp" "$CACHE/libtorch-$TORCH_VERSION"
  touch "$LIBTORCH/.done"
  rm -rf "$WHEELS"
fi

# --- ONNX Runtime shared library from the onnxruntime wheel ---------------------------------------------------
ORT_DIR="$CACHE/onnxruntime-$ORT_VERSION"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$ORT_LIB" ]; then
  say "fetching onnxruntime==$ORT_VERSION wheel from PyPI"
  TMP="$(mktemp -d)"
  ( cd "$TMP" && "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      "onnxruntime==$ORT_VERSION" )
  mkdir -p "$ORT_DIR"
  "$PY" - "$TMP" "$ORT_LIB" <<'PYEOF'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]) as z:
    member = next(n for n in z.namelist() if os.path.basename(n).startswith("libonnxruntime.so."))
    with z.open(member) as src, open(out + ".tmp", "wb") as dst:
        dst.write(src.read())
os.rename(out + ".tmp", out)
PYEOF
  rm -rf "$TMP"
fi

# --- Fashion-MNIST from Debian's dataset-fashion-mnist -----------------------------------------------------------
FMNIST="$CACHE/fashion-mnist"
if [ ! -f "$FMNIST/.done" ]; then
  if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    mkdir -p "$FMNIST"; cp /usr/share/datasets/fashion-mnist/*.gz "$FMNIST/"
  else
    say "fetching Debian's dataset-fashion-mnist"
    TMP="$(mktemp -d)"
    unpack_deb dataset-fashion-mnist "$TMP"
    mkdir -p "$FMNIST"
    cp "$TMP"/usr/share/datasets/fashion-mnist/*.gz "$FMNIST/"
    rm -rf "$TMP"
  fi
  touch "$FMNIST/.done"
fi

# --- DejaVu Sans for `poac report`'s plots (a system copy, else Debian's fonts-dejavu-core) -------------------------
FONT="$CACHE/fonts/DejaVuSans.ttf"
if [ ! -f "$FONT" ]; then
  mkdir -p "$CACHE/fonts"
  if [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$FONT.tmp"
  else
    say "fetching Debian's fonts-dejavu-core"
    TMP="$(mktemp -d)"
    unpack_deb fonts-dejavu-core "$TMP"
    cp "$TMP"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$FONT.tmp"
    rm -rf "$TMP"
  fi
  mv "$FONT.tmp" "$FONT"
fi

# --- gloo headers from Debian's libgloo-dev (the c10d shim includes ProcessGroupGloo.hpp, which includes them; ---
# --- the torch wheel ships libtorch's compiled Gloo but not its headers; only declarations are used) ---------------
GLOO="$CACHE/gloo"
if [ ! -f "$GLOO/.done" ]; then
  say "fetching Debian's libgloo-dev (headers only)"
  TMP="$(mktemp -d)"
  unpack_deb libgloo-dev "$TMP"
  rm -rf "$GLOO"; mkdir -p "$GLOO"
  cp -r "$TMP"/usr/include "$GLOO/"
  rm -rf "$TMP"
  touch "$GLOO/.done"
fi

# --- cargo environment for this clone ---------------------------------------------------------------------------
mkdir -p "$REPO/.cargo"
cat > "$REPO/.cargo/config.toml.tmp" <<TOML
# Written by shells/setup.sh; points the build at the cached libtorch and ONNX Runtime.
[env]
LIBTORCH = "$LIBTORCH"
ORT_DYLIB_PATH = "$ORT_LIB"
POAC_PYTHON = "$PY"
POAC_FASHION_MNIST = "$FMNIST"
POAC_GLOO_INCLUDE = "$GLOO/include"
TOML
mv "$REPO/.cargo/config.toml.tmp" "$REPO/.cargo/config.toml"

say "ready: libtorch=$LIBTORCH ort=$ORT_LIB python=$PY fashion-mnist=$FMNIST font=$FONT gloo=$GLOO/include"
