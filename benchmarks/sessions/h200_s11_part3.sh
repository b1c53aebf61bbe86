#!/usr/bin/env bash
# Session 11, part 3 (1 x H200): does 3-way token splitting of dK/dU/dV, faster alone,
# speed up the training step, whose split backward runs dQ/dR and dK/dU/dV on two
# streams? The training step alternately with the shipped database alone (A) and with
# part 2's three winners over it (B), A B A B in one call
# ; then mhfgen verify --backward split with B (docs/figures/*_h200_2026-12-03c*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
python3 -m mhfgen import docs/figures/tuned_dkv_h200_2026-12-03b.json --db /tmp/s11b.sqlite \
  > /dev/null || exit
for run in A1 B1 A2 B2; do
  if [[ $run == B* ]]; then export MHFGEN_DB=/tmp/s11b.sqlite; else export MHFGEN_DB=/tmp/none.sqlite; fi
  timeout 100 python3 benchmarks/train_step_check.py > "$OUT/train_step_$run.log" 2>&1
  echo "train_step $run rc $?" | tee -a "$OUT/train_step_$run.log"
  grep "| mhfgen | fwdbwd\|layer_mhfgen | fwdbwd" "$OUT/train_step_$run.log"
  date -u >> "$OUT/machine.txt"
done
# mhfgen verify of the split backward as dispatched with B, all three dtypes
export MHFGEN_DB=/tmp/s11b.sqlite
timeout 300 python3 -m mhfgen verify --backward split > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -4 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
