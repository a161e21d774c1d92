#!/usr/bin/env bash
# Runs the CPU-speed grid for candle-gru, PyTorch, candle-nn's GRU and (on CPU, when the Python has
# them) ONNX Runtime and OpenVINO in one run, alternating implementations within each round, then
# prints the tables of medians and ratios and writes a plot.
#
#   scripts/bench_compare.sh [--rounds N] [--threads N] [--device cpu|cuda] [--out DIR]
#
# On CPU it also times our kernel at every lower SIMD level the CPU has (GRU_CPU_LEVEL, as
# `ours@avx2` etc.), streaming one frame per call (ours, PyTorch, ONNX Runtime), and
# examples/stream_latency (a whole streaming model) with RAYON_NUM_THREADS unset and set.
# GRU_PREV=path/to/an/older/gru adds that build's `ours` as `ours-prev` (a change, side by side).
# QUANTIZED=1 adds dynamically quantized GRUs: `ours-int8`/`ours-fp16` (`gru bench --impl`) and
# `pytorch-int8`/`pytorch-fp16` (quantize_dynamic; scripts/bench_torch.py --quantize).
#
# Needs: a release build of `gru` (built here if missing) and a Python with torch
# (PYTHON=venv/bin/python by default, else python3); for the ONNX baselines also
# `pip install onnx onnxruntime openvino` (scripts/bench_onnx.py checks each against PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
THREADS=2
DEVICE=cpu
OUT=bench-out
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-$( [ -x venv/bin/python ] && echo venv/bin/python || echo python3 )}
GRU=${GRU:-target/release/gru}
[ -x "$GRU" ] || cargo build --release -p gru-cli
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

# name | gru bench arguments | iters | candle-nn can run it
GRID=(
  "small|--input-size 16 --hidden-size 32 --num-layers 1 --seq-len 50 --batch 1|2000|yes"
  "medium|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32|10|no"
  "large|--input-size 256 --hidden-size 512 --num-layers 2 --seq-len 200 --batch 64|5|yes"
  "long|--input-size 64 --hidden-size 128 --num-layers 1 --seq-len 2000 --batch 8|10|yes"
  "medium_varlen|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32 --varlen|10|no"
)

# name | gru bench arguments | iters: one frame per call, the state carried.
STREAM_GRID=(
  "stream_small|--input-size 16 --hidden-size 32 --num-layers 1 --seq-len 200 --batch 1 --stream|20"
  "stream_64x96|--input-size 64 --hidden-size 96 --num-layers 2 --seq-len 200 --batch 1 --stream|20"
)

# The SIMD levels below the CPU's best that our kernel also runs at (the best is `ours`).
LEVELS=()
if [ "$DEVICE" = cpu ] && [ "$(uname -m)" = x86_64 ]; then
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  LEVELS=(baseline)
  if [[ $flags == *" avx512f"* ]]; then LEVELS+=(avx2); fi
fi
STREAM_EXAMPLE=target/release/examples/stream_latency
if [ "$DEVICE" = cpu ] && [ ! -x "$STREAM_EXAMPLE" ]; then
  cargo build --release --example stream_latency
fi

RUNTIMES=()
if [ "$DEVICE" = cpu ] && "$PYTHON" -c "import onnx, onnxruntime, openvino" 2>/dev/null; then
  RUNTIMES=(onnxruntime openvino)
fi

tag() { sed "s/^{/{\"config\": \"$1\", \"round\": $2, /"; }

for round in $(seq 1 "$ROUNDS"); do
  for row in "${GRID[@]}"; do
    IFS='|' read -r name args iters cnn <<<"$row"
    common="$args --device $DEVICE --threads $THREADS --warmup 2 --iters $iters --json"
    echo "round $round: $name" >&2
    # shellcheck disable=SC2086
    "$GRU" bench $common --impl ours | tag "$name" "$round" >>"$RESULTS"
    # shellcheck disable=SC2086
    "$PYTHON" scripts/bench_torch.py $common | tag "$name" "$round" >>"$RESULTS"
    for rt in "${RUNTIMES[@]}"; do
      # shellcheck disable=SC2086
      "$PYTHON" scripts/bench_onnx.py --runtime "$rt" $common | tag "$name" "$round" >>"$RESULTS"
    done
    if [ "$cnn" = yes ]; then
      # shellcheck disable=SC2086
      "$GRU" bench $common --impl candle-nn | tag "$name" "$round" >>"$RESULTS"
    fi
    if [ "$DEVICE" = cpu ] && [ -n "${QUANTIZED:-}" ]; then
      # Dynamically quantized GRUs (QUANTIZED=1): ours (int8 and fp16 kernels) beside
      # PyTorch's quantize_dynamic GRU on the same shapes.
      for q in int8 fp16; do
        # shellcheck disable=SC2086
        "$GRU" bench $common --impl "ours-$q" | tag "$name" "$round" >>"$RESULTS"
        # shellcheck disable=SC2086
        "$PYTHON" scripts/bench_torch.py $common --quantize "$q" | tag "$name" "$round" >>"$RESULTS"
      done
    fi
    if [ -n "${GRU_PREV:-}" ]; then
      # shellcheck disable=SC2086
      "$GRU_PREV" bench $common --impl ours | tag "$name" "$round" \
        | sed 's/"impl": *"ours"/"impl":"ours-prev"/' >>"$RESULTS"
    fi
    for level in "${LEVELS[@]}"; do
      # shellcheck disable=SC2086
      GRU_CPU_LEVEL=$level "$GRU" bench $common --impl ours | tag "$name" "$round" \
        | sed "s/\"impl\": *\"ours\"/\"impl\":\"ours@$level\"/" >>"$RESULTS"
    done
  done
  [ "$DEVICE" = cpu ] || continue
  for row in "${STREAM_GRID[@]}"; do
    IFS='|' read -r name args iters <<<"$row"
    common="$args --device cpu --threads $THREADS --warmup 2 --iters $iters --json"
    echo "round $round: $name" >&2
    # shellcheck disable=SC2086
    "$GRU" bench $common --impl ours | tag "$name" "$round" >>"$RESULTS"
    # shellcheck disable=SC2086
    "$PYTHON" scripts/bench_torch.py $common | tag "$name" "$round" >>"$RESULTS"
    if [ ${#RUNTIMES[@]} -gt 0 ]; then
      # shellcheck disable=SC2086
      "$PYTHON" scripts/bench_onnx.py --runtime onnxruntime $common | tag "$name" "$round" >>"$RESULTS"
    fi
  done
  # A whole streaming model as a library user runs it: by default, and with the threads set.
  echo "round $round: stream_model" >&2
  env -u RAYON_NUM_THREADS "$STREAM_EXAMPLE" --frames 1000 --rounds 3 --json \
    | sed 's/"stream_model"/"ours-default-env"/' | tag stream_model "$round" >>"$RESULTS"
  RAYON_NUM_THREADS=$THREADS "$STREAM_EXAMPLE" --frames 1000 --rounds 3 --json \
    | sed 's/"stream_model"/"ours-threads-set"/' | tag stream_model "$round" >>"$RESULTS"
done

# candle's sgemm rate on SIZE^3 in the same run: the yardstick for the large config.
"$GRU" sgemm --size 1024 --threads "$THREADS" --json | tag sgemm 0 >>"$RESULTS"
"$PYTHON" scripts/bench_report.py "$RESULTS" --plot "$OUT/cpu_${DEVICE}.svg" | tee "$OUT/table.md"
