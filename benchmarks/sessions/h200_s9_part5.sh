#!/usr/bin/env bash
# Session 9, part 5 (1 x H200), the shipped database as committed after part 4 (its three
# forward winners merged): mhfgen verify of the split backward as dispatched (two streams;
# bf16 and fp16: part 4's run of all three dtypes outran its 160 s), the reason of the one
# failed trial each forward tune of part 4 reported (op 'fwd' on 1.3B again, fresh
# database, its failed trials printed), and the training step (docs/figures/*_h200_2026-12-02o*; run 2026-12-02 18:38-18:40 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
timeout 280 python3 -m mhfgen verify --backward split --dtypes bfloat16,float16 \
  > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -5 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
export MHFGEN_DB="$OUT/h200_s9c.sqlite"
[ $SECONDS -lt 300 ] && timeout 55 python3 -m mhfgen tune --preset 1.3B --tokens 16384 --kernels fwd \
  --trials 10 --no-progress > "$OUT/tune.log" 2>&1; echo "tune rc $?"; grep "^fwd" "$OUT/tune.log"
python3 - "$MHFGEN_DB" <<'PY' | tee -a "$OUT/tune.log"
import sqlite3, sys
for row in sqlite3.connect(sys.argv[1]).execute(
        "select stage, reason, config from trials where status = 'failed'"):
    print("failed trial:", *row)
PY
unset MHFGEN_DB; rm -f "$OUT"/*.sqlite*
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 400 ] && timeout $((490 - SECONDS)) python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "^|\|rc" "$OUT/train_step.log" | grep "fwdbwd\|rc"
date -u >> "$OUT/machine.txt"
