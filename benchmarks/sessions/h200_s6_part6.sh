#!/usr/bin/env bash
# Session 6, part 6 (1 x H200): the Gluon dQ/dR backward (flash_mhf_bwd_dq_ws) verified
# against float64 and timed beside the Triton one (bwd_dq_ws_check.py); only if every
# verify row passed: tune op 'bwd_dq' (both variants, every candidate checked against
# float64) on the main problems into a fresh database, export, and the training step with
# those winners dispatched (docs/figures/*_h200_2026-12-02c*). Ran 2026-12-02 04:07-04:11 UTC,
# 223 s: 20 of 20 verify rows ok, 4 problems tuned (the Gluon variant won each).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
date -u > "$OUT/machine.txt"
(cd benchmarks && timeout 150 python3 bwd_dq_ws_check.py --budget 140 > "$OUT/bwd_dq_ws_check.log" 2>&1)
rc=$?; echo "check rc $rc" | tee -a "$OUT/bwd_dq_ws_check.log"
grep "^|" "$OUT/bwd_dq_ws_check.log"
date -u >> "$OUT/machine.txt"
[ $rc -eq 0 ] || exit 0
export MHFGEN_DB="$OUT/h200_s6c.sqlite"
tune() {
  timeout 45 python3 -m mhfgen tune "$@" --kernels dq --trials 10 --no-progress \
    >> "$OUT/tune.log" 2>&1 || echo "tune $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
[ $SECONDS -lt 200 ] && tune --preset 1.3B --tokens 16384
[ $SECONDS -lt 230 ] && tune --preset 370M --tokens 16384
[ $SECONDS -lt 255 ] && tune --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
[ $SECONDS -lt 270 ] && tune --preset 1.3B --kv-heads 4 --tokens 16384
python3 -m mhfgen export -o "$OUT/h200_s6c_dq.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
grep -E "^bwd_dq|failed" "$OUT/tune.log"
date -u >> "$OUT/machine.txt"
timeout $((340 - SECONDS)) python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"
grep "fwdbwd\|rc" "$OUT/train_step.log"
date -u >> "$OUT/machine.txt"
