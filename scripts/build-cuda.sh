#!/usr/bin/env bash
# Builds `gru` with `--features cuda` on a machine without a GPU or a CUDA install.
#
#   scripts/build-cuda.sh [--check|--pack]   # --check: `cargo check` only, no binary;
#                                            # --pack: also xz the binaries for carrying
#
# candle-core's `cuda` feature compiles its kernels to PTX with nvcc at build time and links (not
# dlopens) libcuda.so.1, libcublas.so.13, libcurand.so.10, libcudart.so.13 (and NVRTC). This script
# installs the CUDA 13.0 toolchain pieces from PyPI wheels into $CUDA_WHEELS_DIR (pinned: a newer
# nvcc emits PTX that driver 580 cannot load), symlinks the unversioned .so names, generates a
# link-time stub libcuda.so (SONAME libcuda.so.1) from the cu* names in cuda.h, and builds for
# compute capability 9.0 (H100/H200) with an rpath to /usr/local/cuda/lib64, where the GPU machine
# has the real libraries. The stub is never shipped: on the GPU machine the driver's libcuda.so.1
# is found instead.
#
# It also compiles the CUDA kernels' source with NVRTC for sm_80 and sm_90 (scripts/nvrtc_check.py).
#
# Output: target/cuda/gru (stripped `gru`) and target/cuda/gpu-tests (stripped test binary of
# tests/gpu.rs), with --pack also their .xz. About 1.2 GiB of wheels and 10-15 minutes on 2 cores
# the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=build
[ "${1:-}" = "--check" ] && MODE=check
[ "${1:-}" = "--pack" ] && MODE=pack
PY=${PYTHON:-python3}
WHEELS=${CUDA_WHEELS_DIR:-$PWD/target/cuda-toolkit}
SITE="$WHEELS/site"
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)

if [ ! -f "$SITE/.complete" ]; then
  echo "== installing CUDA 13.0 wheels into $SITE" >&2
  rm -rf "$SITE"
  "$PY" -m pip install --quiet --no-deps --no-compile --target "$SITE" "${PINS[@]}"
  touch "$SITE/.complete"
fi

# The wheels put everything under nvidia/cu13 (or nvidia/<component>): gather one CUDA_HOME.
CUDA_HOME="$WHEELS/cuda"
if [ ! -f "$CUDA_HOME/.complete" ]; then
  rm -rf "$CUDA_HOME"
  mkdir -p "$CUDA_HOME/bin" "$CUDA_HOME/include" "$CUDA_HOME/lib64" "$CUDA_HOME/nvvm"
  for d in "$SITE"/nvidia/*/; do
    [ -d "$d/bin" ] && cp -rs "$d/bin/." "$CUDA_HOME/bin/" 2>/dev/null || true
    [ -d "$d/include" ] && cp -rs "$d/include/." "$CUDA_HOME/include/" 2>/dev/null || true
    for lib in lib lib64; do
      [ -d "$d/$lib" ] && cp -rs "$d/$lib/." "$CUDA_HOME/lib64/" 2>/dev/null || true
    done
    [ -d "$d/nvvm" ] && cp -rs "$d/nvvm/." "$CUDA_HOME/nvvm/" 2>/dev/null || true
  done
  # Unversioned names for the linker.
  for so in "$CUDA_HOME"/lib64/lib*.so.*; do
    base=${so%%.so.*}.so
    [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
  done
  # nvcc looks for nvvm next to its bin directory.
  [ -d "$CUDA_HOME/nvvm/bin" ] || { echo "nvvm not found in the wheels" >&2; exit 1; }
  chmod +x "$CUDA_HOME"/bin/* 2>/dev/null || true
  touch "$CUDA_HOME/.complete"
fi

# Link-time stub of the driver API: every cu* name in cuda.h (functions and the versioned names
# such as cuMemAlloc_v2 that its macros map to), as empty symbols. Never shipped.
stub="$CUDA_HOME/stub"
mkdir -p "$stub"
grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$CUDA_HOME/include/cuda.h" | sort -u |
  awk '{ printf "void %s(void) {}\n", $1 }' >"$stub/cuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so.1" "$stub/cuda_stub.c"
ln -sf libcuda.so.1 "$stub/libcuda.so"

export CUDA_HOME CUDA_PATH="$CUDA_HOME" CUDA_ROOT="$CUDA_HOME"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export PATH="$CUDA_HOME/bin:$PATH"
export LIBRARY_PATH="$CUDA_HOME/stub:$CUDA_HOME/lib64:${LIBRARY_PATH:-}"
export LD_LIBRARY_PATH="$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$CUDA_HOME/stub -L native=$CUDA_HOME/lib64 -C link-arg=-Wl,-rpath,/usr/local/cuda/lib64"
export CARGO_TARGET_DIR="$PWD/target/cuda"
nvcc --version | tail -2 >&2

# The kernels' source through NVRTC as at run time (no GPU needed): sm_80 as on an A100, sm_90
# with the cluster kernels as on an H100/H200; prints ptxas's registers and spills per kernel.
"$PY" scripts/nvrtc_check.py "$CUDA_HOME/lib64/libnvrtc.so" crates/gru-core/src/cuda/gru.cu \
  80 90:cluster

if [ "$MODE" = check ]; then
  cargo check --workspace --all-targets --features cuda
  exit 0
fi
mkdir -p target/cuda
# The binary and the GPU test binary in ONE cargo invocation: built separately, their features
# unify differently and candle's CUDA kernels (nvcc, the slow part) would be compiled twice.
cargo build --release -p gru-cli -p candle-gru --features gru-cli/cuda,candle-gru/cuda \
  --bin gru --test gpu --message-format=json-render-diagnostics >target/cuda/artifacts.jsonl
exe() { # the executable of target $1 from cargo's messages
  "$PY" -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[2]:
        print(m["executable"])' target/cuda/artifacts.jsonl "$1" | tail -1
}
for pair in "gru gru" "gpu gpu-tests"; do
  read -r name out <<<"$pair"
  path=$(exe "$name")
  [ -n "$path" ] || { echo "no executable for $name in cargo's output" >&2; exit 1; }
  cp "$path" "target/cuda/$out"
  strip "target/cuda/$out"
done
if [ "$MODE" = pack ]; then
  for f in target/cuda/gru target/cuda/gpu-tests; do xz -T2 -6 -kf "$f"; done
fi
ls -la target/cuda/gru* target/cuda/gpu-tests*
