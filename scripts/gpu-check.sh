#!/usr/bin/env bash
# One short run on a GPU machine (CUDA 13 driver, PyTorch, Python; no Rust, no network):
# parity of every shipped case on CUDA, then the CPU-speed grid on CUDA for candle-gru and for
# PyTorch (cuDNN), alternating, with the ratio table last. Must finish in under 5 minutes.
#
#   scripts/gpu-check.sh LOGDIR [GRU_BINARY]
#
# GRU_BINARY defaults to target/cuda/gru (from scripts/build-cuda.sh), carried to the machine.
# DEVICE=cpu runs the same steps on the CPU (a dry run of the script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:?usage: gpu-check.sh LOGDIR [GRU_BINARY]}
GRU=${2:-target/cuda/gru}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$LOG"
exec > >(tee "$LOG/gpu-check.log") 2>&1
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

echo "== device"
nvidia-smi -L || echo "nvidia-smi failed"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

echo "== parity on $DEVICE (default tolerances)"
timeout 120 "$GRU" verify models --device "$DEVICE"
echo "verify exit code: $?"

echo "== speed on $DEVICE, ours vs PyTorch (cuDNN on cuda), alternating"
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
    # shellcheck disable=SC2086
    timeout 60 "$GRU" bench $common --impl ours | tag "$name" "$round" >>"$RESULTS"
    # shellcheck disable=SC2086
    timeout 60 "$PYTHON" scripts/bench_torch.py $common | tag "$name" "$round" >>"$RESULTS"
  done
done
echo "== table (ratio = ours / PyTorch cuDNN)"
"$PYTHON" scripts/bench_report.py "$RESULTS" --plot "$LOG/$DEVICE.svg"
