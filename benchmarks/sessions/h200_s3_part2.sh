#!/usr/bin/env bash
# Third session (2026-11-28), part 2, one H200, about 9.5 minutes. Usage: bash THIS STATE OUT
#   the tuning suite's shapes 24-30 (the "other" group: Hkv < H, E = 44 and E = 1, D = 96
#   with De = 80, D = 64 with GQA, float16, d = 1536), 16 trials per kernel as the first
#   23; the odd shapes of `mhfgen verify` that part 1's timeout cut (D = 96 fp32, E = 1);
#   the reference comparison (bench_h200.py: the layer's forward + backward with the final
#   norm + router backward launch, never measured before)
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
timeout 280 python3 benchmarks/tuning_figures.py "$STATE/tf" --part suite --shapes 24-30 \
  --trials 16 --jobs 14 > "$STATE/suite.log" 2>&1
timeout 110 python3 cli.py verify --presets "" --json "$STATE/verify_odd.json" > "$STATE/verify_odd.log" 2>&1
timeout $((575 - SECONDS)) python3 benchmarks/bench_h200.py "$STATE/bench" --budget-s 100 > "$STATE/bench.log" 2>&1
echo "bench exit $? at ${SECONDS}s" >> "$STATE/bench.log"
tar czf "$OUT/state.tgz" --exclude='studies' -C "$STATE" .
tail -25 "$STATE/suite.log"; cat "$STATE/verify_odd.log"; tail -30 "$STATE/bench.log"
