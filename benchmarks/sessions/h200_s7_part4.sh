#!/usr/bin/env bash
# Session 7, part 4 (1 x H200), the shipped database as in part 3: the split backward on
# one stream and on two (bwd_streams_check.py: bitwise the same gradients, checked against
# float64, and the times), then with two streams (the default now): the training step,
# determinism and the reference comparison (docs/figures/*_h200_2026-12-02e*). Ran 2026-12-02
# 08:01-08:04 UTC, 154 s.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
timeout 110 python3 benchmarks/bwd_streams_check.py > "$OUT/streams.log" 2>&1
echo "streams rc $?" >> "$OUT/streams.log"; cat "$OUT/streams.log"
date -u >> "$OUT/machine.txt"
timeout 100 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc" "$OUT/train_step.log"
date -u >> "$OUT/machine.txt"
timeout 70 python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"; tail -6 "$OUT/determinism.log"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 300 ] && timeout $((440 - SECONDS)) python3 benchmarks/bench_h200.py "$OUT/bench" \
  --budget-s 0 --helion-effort none > "$OUT/bench.log" 2>&1; echo "bench rc $?"
cp "$OUT/bench/summary.md" "$OUT/bench_summary.md" 2>/dev/null; rm -rf "$OUT/bench"
head -40 "$OUT/bench_summary.md"
date -u >> "$OUT/machine.txt"
