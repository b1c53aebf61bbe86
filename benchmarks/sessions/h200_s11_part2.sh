#!/usr/bin/env bash
# Session 11, part 2 (1 x H200): op 'bwd_dkv' tuned (one study over its three variants,
# the wave-aware heuristic of 3 token splits at 352 weight tiles as each study's first
# trial) on 370M, H16 D64 and 1.3B with 4 kv heads at 16384 tokens into a fresh
# database; every failed trial's reason; then with it over the shipped database the
# training step (docs/figures/*_h200_2026-12-03b*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s11.sqlite"
date -u > "$OUT/machine.txt"
tune() {
  local kernels=$1 trials=$2 limit=$3; shift 3
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels "$kernels" --trials "$trials" \
    --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune $kernels $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
  date -u >> "$OUT/machine.txt"
}
tune dkv 14 100 --preset 370M --tokens 16384
tune dkv 14 100 --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
tune dkv 12 90 --preset 1.3B --kv-heads 4 --tokens 16384
grep -E "^(bwd_dkv|flash)|failed" "$OUT/tune.log"
python3 - "$MHFGEN_DB" <<'PY' | tee -a "$OUT/tune.log"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute("select heads, kv_heads, tokens, stage, reason, config from trials "
                     "where status = 'failed'"):
    print("failed trial:", *row)
PY
python3 -m mhfgen export -o "$OUT/h200_s11_dkv.json" --gpu "NVIDIA H200" > /dev/null 2>&1
timeout 100 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc" "$OUT/train_step.log" | grep "^|\|rc"
rm -f "$OUT"/*.sqlite*
date -u >> "$OUT/machine.txt"
