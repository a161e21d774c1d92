#!/usr/bin/env bash
# Where the GPU time goes, with Nsight Compute (`ncu`, on the GPU machine's image; it needs
# access to the GPU's performance counters, which some sandboxed machines do not give).
# About 2-3 minutes. Run after scripts/gpu-check.sh has shown parity.
#
#   scripts/gpu-profile.sh LOGDIR [GRU_BINARY]
#
# 1. Every kernel of ONE small forward (16/32/1L, T=50, B=1), with its duration: what the ~50 us
#    of fixed cost per forward launches (candle's ops around ours), in launch order.
# 2. The same for one large forward's first steps (per-step path: cuBLAS GEMM + gate kernel).
# 3. One launch of the persistent kernel on long (64/128, T=200, B=8; cluster of 8 on sm_90+),
#    on small (16/32, T=1000, B=1; one block) and on medium's first layer (grid barrier, 32
#    blocks per direction): throughput, warp stall reasons (cycles per issued instruction,
#    largest first), occupancy, shared-memory traffic, and the SASS lines where warps stall most
#    (SourceCounters; the whole report is in LOGDIR).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:?usage: gpu-profile.sh LOGDIR [GRU_BINARY]}
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
# shellcheck source=scripts/gpu_unpack.sh
. scripts/gpu_unpack.sh
GRU=$(unpack "${2:-target/cuda/gru}")
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found"; exit 2; }
"$NCU" --version | tail -1
# A warm JIT cache first, so that nothing below times the driver compiling candle's PTX.
"$GRU" bench --input-size 16 --hidden-size 32 --seq-len 50 --batch 1 --device cuda --iters 1 >/dev/null

kernels() { # NAME ARGS...: every kernel the bench launches, name and duration (us)
  local name=$1; shift
  echo "== $name: every kernel in launch order (building the model, then one forward)"
  timeout 120 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv \
    "$GRU" bench "$@" --device cuda --warmup 0 --iters 1 >"$LOG/$name.csv" 2>"$LOG/$name.err"
  echo "ncu exit code: $?"
  # The CSV has one row per kernel and metric: ID, ..., Kernel Name, ..., Metric Value.
  "${PYTHON:-python3}" - "$LOG/$name.csv" <<'PY'
import csv, sys
SCALE = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
         "second": 1e6, "s": 1e6}
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next((r for r in rows if "Kernel Name" in r and "Metric Value" in r), None)
if head is None:
    print("no kernels recorded"); sys.exit()
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
ui = head.index("Metric Unit") if "Metric Unit" in head else None
body = [r for r in rows[rows.index(head) + 1:] if len(r) == len(head)]
total = 0.0
for r in body:
    us = float(r[vi].replace(",", "")) * SCALE.get(r[ui] if ui is not None else "nsecond", 1e-3)
    total += us
    print(f"{us:9.2f} us  {r[ki][:110]}")
print(f"{len(body)} kernels, {total:.1f} us of GPU time in all")
PY
}
kernels small --input-size 16 --hidden-size 32 --seq-len 50 --batch 1 --impl ours
kernels large_step --input-size 256 --hidden-size 512 --num-layers 1 --seq-len 4 --batch 64 --impl ours-step

# The stall reasons as ratios (cycles stalled per issued instruction) with the sections' metrics.
STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
persist() { # NAME ARGS...: one launch of the persistent kernel
  local name=$1; shift
  echo "== $name: one launch of the persistent kernel, counters"
  local rc extra=(--metrics "$STALLS")
  for _ in 1 2; do # without the stall metrics if this ncu refuses them
    timeout 180 "$NCU" --clock-control none --kernel-name regex:gru_persist --launch-count 1 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      --section MemoryWorkloadAnalysis --section SourceCounters "${extra[@]}" \
      "$GRU" bench "$@" --device cuda --warmup 0 --iters 1 --impl ours-persistent \
      >"$LOG/${name}_persist.txt" 2>&1
    rc=$?
    [ $rc = 0 ] || [ ${#extra[@]} = 0 ] && break
    echo "ncu exit code $rc with the stall metrics; again without them"; extra=()
  done
  echo "ncu exit code: $rc"
  grep -E "gru_persist|Duration|Throughput|Block Size|Grid Size|Cluster|Registers|Shared Memory|Achieved Occupancy|Warp Cycles|Issued" \
    "$LOG/${name}_persist.txt" | head -40
  echo "-- stall reasons (cycles per issued instruction), largest first"
  grep -E "stalled_.*ratio" "$LOG/${name}_persist.txt" | awk '{print $NF, $1}' | sort -gr | head -8
}
persist long --input-size 64 --hidden-size 128 --seq-len 200 --batch 8
persist small --input-size 16 --hidden-size 32 --seq-len 1000 --batch 1
# The grid barrier (BENCHMARKS.md's cost model: the read-back of h was most of its time).
persist medium --input-size 128 --hidden-size 256 --seq-len 100 --batch 32 --bidirectional
