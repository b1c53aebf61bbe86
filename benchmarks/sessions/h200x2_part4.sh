#!/usr/bin/env bash
# Part 4 of the 2026-11-28 measurements on a 2 x H200 machine, about 6 minutes, after the
# norm + router function and the sm90 prune rule. Usage: bash THIS STATE OUT
#   GPU 0: the reference comparison again (bench_h200.py: the layer's new memory figure)
#   GPU 1: Optuna vs the grid for dK/dU/dV on 370M-T16384 (its first run lost the context)
#   then, alone on the machine (host timings): dispatch overhead, decode eager + sweep
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
CUDA_VISIBLE_DEVICES=0 timeout 240 python3 benchmarks/bench_h200.py "$STATE/bench" \
  --budget-s 150 > "$STATE/p4_bench.log" 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 240 python3 benchmarks/tuning_figures.py "$STATE/tf" \
  --part grid --shapes 370M-T16384 --jobs 16 --no-report > "$STATE/p4_grid.log" 2>&1 &
wait
export CUDA_VISIBLE_DEVICES=0
timeout 60 python3 benchmarks/dispatch_overhead.py --json "$STATE/dispatch.json" \
  > "$STATE/p4_dispatch.log" 2>&1
timeout 200 python3 benchmarks/decode.py --shapes 1.3B,370M --tokens 1,8,64 --sweep 64 \
  --json "$STATE/decode.json" > "$STATE/p4_decode.log" 2>&1
python3 benchmarks/tuning_figures.py "$STATE/tf" --part report > "$STATE/report.txt" 2>&1
rm -rf "$STATE/tf/studies"
tar czf "$OUT/state.tgz" -C "$STATE" .
tail -32 "$STATE/p4_bench.log"; tail -3 "$STATE/p4_grid.log"; tail -14 "$STATE/p4_dispatch.log"
tail -40 "$STATE/p4_decode.log"
