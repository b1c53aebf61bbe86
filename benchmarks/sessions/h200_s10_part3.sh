#!/usr/bin/env bash
# Session 10, part 3 (1 x H200), the shipped database with part 2's two dK/dU/dV winners
# (flash_mhf_bwd_dkvt_ws at H16 D64 and at 1.3B with 4 kv heads) and no user database:
# the training step twice (the run-to-run spread) and the reference comparison
# (bench_h200.py, no Helion rows) (docs/figures/*_h200_2026-12-02s*; run 2026-12-02 22:38-22:41 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
for run in 1 2; do
  timeout 100 python3 benchmarks/train_step_check.py > "$OUT/train_step_$run.log" 2>&1
  echo "train_step rc $?" >> "$OUT/train_step_$run.log"
  grep "fwdbwd\|rc" "$OUT/train_step_$run.log" | grep "^|\|rc" | grep "mhfgen |\|swiglu |\|rc"
  date -u >> "$OUT/machine.txt"
done
timeout 300 python3 benchmarks/bench_h200.py "$OUT/bench" --budget-s 0 --helion-effort none \
  > "$OUT/bench.log" 2>&1; echo "bench rc $?"
cp "$OUT/bench/summary.md" "$OUT/bench_summary.md" 2>/dev/null; rm -rf "$OUT/bench"
head -30 "$OUT/bench_summary.md" 2>/dev/null
date -u >> "$OUT/machine.txt"
