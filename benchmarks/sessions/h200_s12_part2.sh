#!/usr/bin/env bash
# Session 12, part 2 (1 x H200): op 'bwd_dkv' tuned in context, each candidate timed
# beside the dispatcher's dQ/dR on a second stream (as the split backward runs them) less
# that dQ/dR alone, on 370M, H16 D64 and 1.3B at 16384 tokens into a fresh database, the shipped winner of each problem re-timed beside the finalists (Tuner baselines), every side-by-side time printed; then
# the training step alternately with the shipped database alone (A) and with those
# winners over it (C), A C A C (docs/figures/*_h200_2026-12-03e*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
DB="$OUT/s12.sqlite"
date -u > "$OUT/machine.txt"
tune() {
  local trials=$1 limit=$2; shift 2
  MHFGEN_DB="$DB" timeout "$limit" python3 -m mhfgen tune "$@" --kernels dkv \
    --trials "$trials" --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
  date -u >> "$OUT/machine.txt"
}
tune 14 120 --preset 370M --tokens 16384
tune 14 120 --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
tune 12 120 --preset 1.3B --tokens 16384
grep -E "^(bwd_dkv|flash)|timed in|side by side|failed" "$OUT/tune.log"
MHFGEN_DB="$DB" python3 -m mhfgen export -o "$OUT/tuned_dkv.json" --gpu "NVIDIA H200" \
  > /dev/null 2>&1
for run in A1 C1 A2 C2; do
  if [[ $run == C* ]]; then export MHFGEN_DB="$DB"; else export MHFGEN_DB=/tmp/none.sqlite; fi
  timeout 100 python3 benchmarks/train_step_check.py > "$OUT/train_step_$run.log" 2>&1
  echo "train_step $run rc $?" | tee -a "$OUT/train_step_$run.log"
  grep "| mhfgen | fwdbwd\|layer_mhfgen | fwdbwd" "$OUT/train_step_$run.log"
  date -u >> "$OUT/machine.txt"
done
rm -f "$OUT"/*.sqlite*
