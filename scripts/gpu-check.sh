#!/usr/bin/env bash
# One short run on a GPU machine (CUDA 13 driver, PyTorch, Python; no Rust, no network), about
# 4 minutes: preflight (GPU, driver, the binary's libraries), ONE case, then every case with every
# kernel and persistent variant, `--device auto`, the GPU test binary (4 host threads sharing one
# model), a checkpoint saved by PyTorch from a real CUDA model, the speed grid against PyTorch
# (cuDNN), alternating, the fixed cost per forward, the cluster x split sweep, the st.async
# exchange against the cluster barrier, and large with Auto's batch cap at 64 and at 32.
#
#   scripts/gpu-check.sh LOGDIR [GRU_BINARY [GPU_TEST_BINARY]]
#
# The binaries come from scripts/build-cuda.sh (target/cuda/gru and target/cuda/gpu-tests, or
# their .xz, which this script unpacks). DEVICE=cpu runs the same steps on the CPU (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:?usage: gpu-check.sh LOGDIR [GRU_BINARY [GPU_TEST_BINARY]]}
GRU=${2:-target/cuda/gru}
GPU_TESTS=${3:-target/cuda/gpu-tests}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
exec > >(tee "$LOG/gpu-check.log") 2>&1
START=$SECONDS
stamp() { echo "== [$((SECONDS - START)) s] $*"; }

# shellcheck source=scripts/gpu_unpack.sh
. scripts/gpu_unpack.sh
GRU=$(unpack "$GRU")
GPU_TESTS=$(unpack "$GPU_TESTS")

stamp "preflight"
nvidia-smi -L || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
ls -la "$GRU" "$GPU_TESTS" 2>&1
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# Libraries the binary cannot find in /usr/local/cuda/lib64 are taken from the NVIDIA wheels that
# PyTorch installed, for the `gru` command lines only (never for the PyTorch runs).
GRU_LIBS=$LD_LIBRARY_PATH
missing=$(ldd "$GRU" | grep "not found" || true)
echo "ldd $GRU:"; ldd "$GRU" | grep -E "cuda|cublas|curand|nvrtc|not found" || true
if [ -n "$missing" ]; then
  echo "missing: $missing"
  wheel_libs=$("$PYTHON" -c 'import glob, os, site; print(":".join(sorted(set(os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/**/lib*.so*", recursive=True)))))')
  GRU_LIBS="$LD_LIBRARY_PATH:$wheel_libs"
  echo "falling back to PyTorch's NVIDIA libraries: $wheel_libs"
  LD_LIBRARY_PATH=$GRU_LIBS ldd "$GRU" | grep "not found" || echo "all libraries found now"
fi
gru() { # gru SECONDS ARGS...: the binary with its libraries, under a time limit
  local limit=$1; shift
  LD_LIBRARY_PATH=$GRU_LIBS timeout "$limit" "$GRU" "$@"
}
median_ms() { sed -n 's/.*"median_ms":\([0-9.]*\).*/\1/p'; } # of `bench --json`

stamp "one case on $DEVICE"
gru 60 verify models/reference/uni_l1_h0.case.safetensors --device "$DEVICE"
echo "one-case exit code: $?"

for k in auto persistent step ops; do
  stamp "every case on $DEVICE, --kernel $k"
  gru 60 verify models --device "$DEVICE" --kernel "$k"
  echo "verify --kernel $k exit code: $?"
done

# The persistent kernel's ways of meeting between steps, each forced on every case: the grid
# barrier (no clusters), clusters of 2, 4 and 8 blocks (sm_90+) with column splits, and the
# clusters' st.async exchange on mbarriers (GRU_PERSISTENT_ASYNC, not yet run on a GPU).
for knobs in "GRU_PERSISTENT_CLUSTER=0 GRU_PERSISTENT_KSPLIT=1" "GRU_PERSISTENT_CLUSTER=0 GRU_PERSISTENT_ITEMS=8" \
  "GRU_PERSISTENT_CLUSTER=2 GRU_PERSISTENT_KSPLIT=1" "GRU_PERSISTENT_CLUSTER=4 GRU_PERSISTENT_KSPLIT=3" \
  "GRU_PERSISTENT_CLUSTER=8" "GRU_PERSISTENT_CLUSTER=4 GRU_PERSISTENT_KSPLIT=3 GRU_PERSISTENT_ASYNC=1" \
  "GRU_PERSISTENT_CLUSTER=8 GRU_PERSISTENT_ASYNC=1"; do
  stamp "every case on $DEVICE, --kernel persistent, $knobs"
  # shellcheck disable=SC2086
  env $knobs LD_LIBRARY_PATH=$GRU_LIBS timeout 60 "$GRU" verify models --device "$DEVICE" --kernel persistent
  echo "verify --kernel persistent $knobs exit code: $?"
done

stamp "--device auto"
gru 60 verify models/reference/uni_l1_h0.case.safetensors --device auto
echo "auto exit code: $?"

if [ -x "$GPU_TESTS" ] && [ "$DEVICE" = cuda ]; then
  stamp "GPU tests (4 host threads, every kernel)"
  GRU_MODELS_DIR=$PWD/models LD_LIBRARY_PATH=$GRU_LIBS timeout 120 "$GPU_TESTS" --test-threads 1
  echo "gpu tests exit code: $?"
fi

if [ "$DEVICE" = cuda ]; then
  stamp "a checkpoint saved by PyTorch from a CUDA model"
  timeout 60 "$PYTHON" scripts/gpu_cuda_checkpoint.py "$LOG/cuda_ckpt" &&
    for dev in cuda cpu; do
      gru 60 verify "$LOG/cuda_ckpt" --device "$dev"
      echo "cuda checkpoint on $dev exit code: $?"
    done
fi

stamp "speed on $DEVICE: ours (auto, step, persistent) vs PyTorch (cuDNN on cuda), alternating"
RESULTS="$LOG/results.jsonl"
: >"$RESULTS"
GRID=(
  "small|--input-size 16 --hidden-size 32 --num-layers 1 --seq-len 50 --batch 1|50"
  "medium|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32|10"
  "large|--input-size 256 --hidden-size 512 --num-layers 2 --seq-len 200 --batch 64|10"
  "long|--input-size 64 --hidden-size 128 --num-layers 1 --seq-len 2000 --batch 8|5"
  "medium_varlen|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32 --varlen|10"
)
tag() { sed "s/^{/{\"config\": \"$1\", \"round\": $2, /"; }
for round in 1 2; do
  for row in "${GRID[@]}"; do
    IFS='|' read -r name args iters <<<"$row"
    common="$args --device $DEVICE --warmup 3 --iters $iters --json"
    for impl in ours ours-step ours-persistent; do
      # shellcheck disable=SC2086
      gru 60 bench $common --impl $impl | tag "$name" "$round" >>"$RESULTS"
    done
    # shellcheck disable=SC2086
    timeout 60 "$PYTHON" scripts/bench_torch.py $common | tag "$name" "$round" >>"$RESULTS"
  done
  stamp "round $round done"
done
stamp "fixed cost per forward vs cost per step (small config, T = 1, 50, 1000; ms)"
for t in 1 50 1000; do
  for impl in ours-persistent ours-step; do
    gru 60 bench --input-size 16 --hidden-size 32 --seq-len $t --batch 1 --device "$DEVICE" \
      --warmup 3 --iters 50 --impl $impl --json | sed -n 's/.*"impl":"\([^"]*\)".*"median_ms":\([0-9.]*\).*/'"T=$t"' \1 \2/p'
  done
done
stamp "the same without candle's per-buffer CUDA event tracking (bench --no-event-tracking; ms)"
for t in 1 50; do
  for impl in ours-persistent ours-step; do
    gru 60 bench --input-size 16 --hidden-size 32 --seq-len $t --batch 1 --device "$DEVICE" \
      --warmup 3 --iters 50 --impl $impl --no-event-tracking --json |
      sed -n 's/.*"impl":"\([^"]*\)".*"median_ms":\([0-9.]*\).*/'"T=$t"' \1 \2/p'
  done
done
stamp "persistent kernel: cluster size (0: grid barrier) x column split vs ms (one run each)"
for row in "small|--input-size 16 --hidden-size 32 --seq-len 50 --batch 1" \
  "long|--input-size 64 --hidden-size 128 --seq-len 2000 --batch 8" \
  "medium|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32" \
  "h256b16|--input-size 64 --hidden-size 256 --seq-len 500 --batch 16"; do
  IFS='|' read -r name args <<<"$row"
  for cluster in 0 2 4 8; do
    line="$name cluster=$cluster"
    for ks in 1 2 4 8; do
      # shellcheck disable=SC2086
      ms=$(GRU_PERSISTENT_CLUSTER=$cluster GRU_PERSISTENT_KSPLIT=$ks gru 60 bench $args \
        --device "$DEVICE" --warmup 3 --iters 10 --impl ours-persistent --json 2>/dev/null |
        median_ms)
      line="$line ks$ks=${ms:-none}"
    done
    echo "$line"
  done
done
stamp "clusters: the cluster barrier vs the st.async exchange (GRU_PERSISTENT_ASYNC=1), alternating; ms"
for row in "long|--input-size 64 --hidden-size 128 --seq-len 2000 --batch 8" \
  "long_b1|--input-size 64 --hidden-size 128 --seq-len 2000 --batch 1" \
  "h256b4|--input-size 64 --hidden-size 256 --seq-len 500 --batch 4"; do
  IFS='|' read -r name args <<<"$row"
  line="$name"
  for round in 1 2 3; do
    for a in 0 1; do
      # shellcheck disable=SC2086
      ms=$(GRU_PERSISTENT_ASYNC=$a gru 60 bench $args --device "$DEVICE" --warmup 3 --iters 10 \
        --impl ours-persistent --json 2>/dev/null | median_ms)
      line="$line async$a=${ms:-none}"
    done
  done
  echo "$line"
done
stamp "Auto's batch cap for the persistent kernel (GRU_PERSISTENT_MAX_BATCH): large at 64 vs 32; ms"
for round in 1 2; do
  for cap in 64 32; do
    ms=$(GRU_PERSISTENT_MAX_BATCH=$cap gru 60 bench --input-size 256 --hidden-size 512 --num-layers 2 \
      --seq-len 200 --batch 64 --device "$DEVICE" --warmup 3 --iters 10 --impl ours --json 2>/dev/null |
      median_ms)
    echo "large round $round cap $cap: ${ms:-none}"
  done
done
stamp "table (ratio = ours / PyTorch cuDNN, medians of 2 rounds)"
"$PYTHON" scripts/bench_report.py "$RESULTS" --all-impls
stamp "done"
