#!/usr/bin/env bash
# Session 6, part 2 (1 x H200): tune op 'bwd_dkv' (a joint study of flash_mhf_bwd_dkv_ws and
# flash_mhf_bwd_dkv, every candidate checked against float64) on the suite's backward
# problems into a fresh database, export its winners; then with them dispatched: the
# training step (train_step_check.py), bitwise reproducibility and the deterministic
# mode's cost (bwd_determinism.py) and, time permitting, mhfgen verify of the split backward
# (docs/figures/*_h200_2026-12-02b*). Ran 2026-12-02 03:40-03:45 UTC, 281 s: the tuning took
# 10 problems (the 370M preset at 32768 tokens was cut by the time guard), then the rest.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_DB="$OUT/h200_s6.sqlite" MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
date -u > "$OUT/machine.txt"
tune() {
  timeout 70 python3 -m mhfgen tune "$@" --kernels dkv --trials 12 --no-progress \
    >> "$OUT/tune.log" 2>&1 || echo "tune $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
[ $SECONDS -lt 100 ] && tune --preset 1.3B --tokens 16384
[ $SECONDS -lt 160 ] && tune --preset 370M --tokens 16384
[ $SECONDS -lt 200 ] && tune --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
[ $SECONDS -lt 230 ] && tune --preset 1.3B --kv-heads 4 --tokens 16384
for tokens in 2048 8192 32768; do
  for preset in 1.3B 370M; do [ $SECONDS -lt 300 ] && tune --preset "$preset" --tokens "$tokens"; done
done
python3 -m mhfgen export -o "$OUT/h200_s6_dkv.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
grep -E "^flash|failed" "$OUT/tune.log" | tail -14
date -u >> "$OUT/machine.txt"
timeout $((480 - SECONDS)) python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"
grep -v "^\[" "$OUT/train_step.log" | tail -16
date -u >> "$OUT/machine.txt"
timeout $((575 - SECONDS)) python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"
tail -7 "$OUT/determinism.log"
date -u >> "$OUT/machine.txt"
