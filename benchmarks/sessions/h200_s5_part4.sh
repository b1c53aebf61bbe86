#!/usr/bin/env bash
# Session 5, part 4 (1 x H200): (1) what the Gluon one-pass backward's reductions cost
# (bwd_ws_check.py --diagnose); (2) tune op 'bwd' (a joint study of flash_mhf_bwd_ws and
# flash_mhf_bwd_fused, every candidate checked against float64) at 16384 tokens on 1.3B,
# 370M and (H16, D64) into a fresh database, exported; (3) the training step with those
# winners dispatched (train_step_check.py). Raw logs: docs/figures/*_h200_2026-12-02*.
# Ran 2026-12-02 02:14-02:17 UTC, 190 s (the tuning took 12 trials per problem).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_DB="$OUT/h200_s5b.sqlite" MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
date -u > "$OUT/machine.txt"
timeout 130 python3 benchmarks/bwd_ws_check.py --diagnose --skip-verify --shapes "" \
  --budget 120 > "$OUT/diagnose.log" 2>&1; echo "diagnose rc $?" >> "$OUT/diagnose.log"
grep -v "^|" "$OUT/diagnose.log" | tail -20
tune() {
  timeout 75 python3 -m mhfgen tune "$@" --kernels bwd --trials 12 --no-progress \
    >> "$OUT/tune.log" 2>&1 || echo "tune $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
[ $SECONDS -lt 250 ] && tune --preset 1.3B --tokens 16384
[ $SECONDS -lt 300 ] && tune --preset 370M --tokens 16384
[ $SECONDS -lt 340 ] && tune --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
python3 -m mhfgen export -o "$OUT/h200_s5b_bwd.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
grep -E "^flash|failed" "$OUT/tune.log" | tail -12
date -u >> "$OUT/machine.txt"
timeout $((575 - SECONDS)) python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"
date -u >> "$OUT/machine.txt"
grep -v "^\[" "$OUT/train_step.log" | tail -30
