#!/usr/bin/env bash
# What wide steps cost (issue 28): small f32 GRUs timed with wide steps (the default, where they
# apply), with `--f32-steps`, and PyTorch, alternating within each of 3 rounds, 2 threads; prints
# a table of medians and ratios. Needs a Python with torch (PYTHON, default venv/bin/python).
#   scripts/bench_wide_steps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-venv/bin/python}
GRU=${GRU:-target/release/gru}
[ -x "$GRU" ] || cargo build --release -p gru-cli
GRID=(
  "--input-size 8 --hidden-size 16 --num-layers 2 --seq-len 100 --batch 4"
  "--input-size 4 --hidden-size 24 --num-layers 2 --seq-len 100 --batch 4"
  "--input-size 32 --hidden-size 48 --num-layers 2 --seq-len 100 --batch 4"
  "--input-size 16 --hidden-size 64 --num-layers 2 --seq-len 100 --batch 4"
  "--input-size 64 --hidden-size 64 --num-layers 2 --seq-len 100 --batch 8"
  "--input-size 64 --hidden-size 128 --num-layers 1 --seq-len 100 --batch 1"
  "--input-size 64 --hidden-size 128 --num-layers 2 --seq-len 100 --batch 4"
  "--input-size 64 --hidden-size 128 --num-layers 2 --bidirectional --seq-len 100 --batch 4"
  "--input-size 64 --hidden-size 128 --num-layers 2 --seq-len 100 --batch 32"
  "--input-size 40 --hidden-size 64 --num-layers 2 --seq-len 200 --batch 1 --stream"
  "--input-size 40 --hidden-size 128 --num-layers 2 --seq-len 200 --batch 1 --stream"
)
ms() { grep -oE 'median [0-9.]+ ms' | grep -oE '[0-9.]+' || echo nan; }
RAW=$(mktemp)
for round in 1 2 3; do
  for c in "${GRID[@]}"; do
    # shellcheck disable=SC2086
    echo "$c|default|$("$GRU" bench $c --iters 20 2>&1 | ms)" >> "$RAW"
    # shellcheck disable=SC2086
    echo "$c|f32-steps|$("$GRU" bench $c --iters 20 --f32-steps 2>&1 | ms)" >> "$RAW"
    # shellcheck disable=SC2086
    echo "$c|pytorch|$("$PYTHON" scripts/bench_torch.py $c --iters 20 2>&1 | ms)" >> "$RAW"
  done
done
"$PYTHON" - "$RAW" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, side, v = line.strip().split("|")
    d[(c, side)].append(float(v))
print("| config | default (ms) | --f32-steps (ms) | PyTorch (ms) | default / f32 steps | default / PyTorch |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for c in dict.fromkeys(k[0] for k in d):
    m = {s: statistics.median(d[(c, s)]) for s in ("default", "f32-steps", "pytorch")}
    print(f"| `{c}` | {m['default']:.3f} | {m['f32-steps']:.3f} | {m['pytorch']:.3f} | "
          f"{m['default'] / m['f32-steps']:.2f} | {m['default'] / m['pytorch']:.2f} |")
PY
rm -f "$RAW"
