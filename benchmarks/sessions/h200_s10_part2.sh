#!/usr/bin/env bash
# Session 10, part 2 (1 x H200): op 'bwd_dkv' tuned with flash_mhf_bwd_dkvt_ws beside
# flash_mhf_bwd_dkv_ws in one study (the heuristic, now dkvt's 64 rows s4 at D = 64 and
# 32 rows s3 with grouped heads, is each study's first trial) on H16 D64 and 1.3B with 4
# kv heads at 16384 tokens into a fresh database; every failed trial's reason; then with
# it the training step, mhfgen verify of the split backward as dispatched (bf16 and fp16,
# two streams) and determinism with its cost (docs/figures/*_h200_2026-12-02r*; run 2026-12-02 22:14-22:16 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s10.sqlite"
date -u > "$OUT/machine.txt"
tune() {
  local kernels=$1 trials=$2 limit=$3; shift 3
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels "$kernels" --trials "$trials" \
    --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune $kernels $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
tune dkv 16 90 --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
tune dkv 10 60 --preset 1.3B --kv-heads 4 --tokens 16384
grep -E "^(bwd_dkv|flash)|failed" "$OUT/tune.log"
python3 - "$MHFGEN_DB" <<'PY' | tee -a "$OUT/tune.log"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute("select heads, kv_heads, tokens, stage, reason, config from trials "
                     "where status = 'failed'"):
    print("failed trial:", *row)
PY
python3 -m mhfgen export -o "$OUT/h200_s10_dkv.json" --gpu "NVIDIA H200" > /dev/null 2>&1
date -u >> "$OUT/machine.txt"
timeout 100 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc" "$OUT/train_step.log" | grep "^|\|rc"
date -u >> "$OUT/machine.txt"
timeout 200 python3 -m mhfgen verify --backward split --dtypes bfloat16,float16 \
  > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -4 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 500 ] && timeout 60 python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"; tail -6 "$OUT/determinism.log"
rm -f "$OUT"/*.sqlite*
date -u >> "$OUT/machine.txt"
