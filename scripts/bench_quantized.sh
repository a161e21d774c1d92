#!/usr/bin/env bash
# The quantized grid: ours (f32, int8, fp16) beside PyTorch (f32, quantize_dynamic int8 and fp16),
# alternating implementations within each of 3 rounds, 2 threads; writes JSON lines (default
# bench-out/quantized.jsonl). Needs a Python with torch (PYTHON, default venv/bin/python).
#   scripts/bench_quantized.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-venv/bin/python}
GRU=${GRU:-target/release/gru}
[ -x "$GRU" ] || cargo build --release -p gru-cli
OUT=${1:-bench-out/quantized.jsonl}; mkdir -p "$(dirname "$OUT")"; : > "$OUT"
GRID=(
  "small|--input-size 16 --hidden-size 32 --num-layers 1 --seq-len 50 --batch 1|500"
  "medium|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32|5"
  "large|--input-size 256 --hidden-size 512 --num-layers 2 --seq-len 200 --batch 64|3"
  "long|--input-size 64 --hidden-size 128 --num-layers 1 --seq-len 2000 --batch 8|5"
  "medium_varlen|--input-size 128 --hidden-size 256 --num-layers 2 --bidirectional --seq-len 100 --batch 32 --varlen|5"
  "stream_small|--input-size 16 --hidden-size 32 --num-layers 1 --seq-len 200 --batch 1 --stream|10"
)
tag() { sed "s/^{/{\"config\": \"$1\", \"round\": $2, /"; }
for round in 1 2 3; do
  for row in "${GRID[@]}"; do
    IFS='|' read -r name args iters <<<"$row"
    common="$args --threads 2 --warmup 2 --iters $iters --json"
    echo "round $round $name" >&2
    "$GRU" bench $common --impl ours | tag $name $round >> "$OUT"
    for q in int8 fp16; do
      "$GRU" bench $common --impl ours-$q | tag $name $round >> "$OUT"
      "$PYTHON" scripts/bench_torch.py $common --quantize $q 2>/dev/null | tag $name $round >> "$OUT"
    done
    "$PYTHON" scripts/bench_torch.py $common | tag $name $round >> "$OUT"
  done
done
# The table of medians and ratios (BENCHMARKS.md, "Quantized GRUs").
"$PYTHON" - "$OUT" <<'EOF'
import json, statistics, collections, sys
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith('{')]
med=collections.defaultdict(list)
for r in rows: med[(r['config'], r['impl'])].append(r['median_ms'])
cfgs=[]
for r in rows:
    if r['config'] not in cfgs: cfgs.append(r['config'])
impls=['ours','pytorch','ours-int8','pytorch-int8','ours-fp16','pytorch-fp16']
print("| config | " + " | ".join(impls) + " | int8: ours / PyTorch | int8 ours / our f32 | fp16: ours / PyTorch |")
print("| --- |" + " ---: |"*(len(impls)+3))
for c in cfgs:
    m={i: statistics.median(med[(c,i)]) for i in impls if med[(c,i)]}
    f=lambda i: f"{m[i]:.3f}" if i in m else "-"
    r=lambda a,b: f"**{m[a]/m[b]:.2f}**" if a in m and b in m else "-"
    print(f"| {c} | " + " | ".join(f(i) for i in impls) + f" | {r('ours-int8','pytorch-int8')} | {r('ours-int8','ours')} | {r('ours-fp16','pytorch-fp16')} |")
EOF
