#!/usr/bin/env bash
# Session 8, part 4 (1 x H200), the shipped database as in part 3: the training step again
# (part 3's log did not come back: too many output files) and mhfgen verify of the split
# backward as dispatched, on two streams (the default) (docs/figures/*_h200_2026-12-02j*).
# Few output files, so that all of them come back.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
timeout 110 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc" "$OUT/train_step.log"
date -u >> "$OUT/machine.txt"
timeout $((400 - SECONDS)) python3 -m mhfgen verify --backward split --json "$OUT/verify.json" \
  > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -28 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
