#!/usr/bin/env bash
# Part 2 of the 2026-11-28 measurements on a 2 x H200 machine, about 9.5 minutes, with the
# shipped database re-tuned by part 1. Usage, from the repo root: bash THIS STATE OUT
#   GPU 0: Optuna against the exhaustive grid on 370M-T16384 (issue 4), the decode bench
#          with a config sweep (issue 5), the dispatch host overhead (issue 4)
#   GPU 1: the reference comparison (bench_h200.py, issue 5), then the grid on 1.3B-T16384
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 280 python3 benchmarks/tuning_figures.py "$STATE/tf" --part grid \
    --shapes 370M-T16384 --jobs 14 --no-report
  timeout 200 python3 benchmarks/decode.py --shapes 1.3B,370M --tokens 1,8,64 --sweep 1 \
    --json "$STATE/decode.json"
  timeout 60 python3 benchmarks/dispatch_overhead.py --json "$STATE/dispatch.json"
) > "$STATE/p2_gpu0.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 330 python3 benchmarks/bench_h200.py "$STATE/bench" --budget-s 200
  timeout $((555 - SECONDS)) python3 benchmarks/tuning_figures.py "$STATE/tf" --part grid \
    --shapes 1.3B-T16384 --jobs 14 --no-report
) > "$STATE/p2_gpu1.log" 2>&1 &
wait
python3 benchmarks/tuning_figures.py "$STATE/tf" --part report > "$STATE/report.txt" 2>&1
tar czf "$OUT/state.tgz" -C "$STATE" .
grep -v "^ \|^{\|^}\|%\|mlir\|^#" "$STATE/p2_gpu0.log" | tail -45
tail -25 "$STATE/p2_gpu1.log"
