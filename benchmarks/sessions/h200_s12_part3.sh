#!/usr/bin/env bash
# Session 12, part 3 (1 x H200): op 'bwd_dkv' on 370M at 16384 tokens tuned in context
# (beside the dispatcher's dQ/dR on a second stream, less dQ/dR alone), the default now
# without token splits from two waves of weight tiles up, the shipped winner re-timed
# beside the finalists (its template hash changed since; its code did not), into a fresh
# database; then the training step with the shipped database alone (A) and with the new
# winner over it (C), A C A C (docs/figures/*_h200_2026-12-03f*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
DB="$OUT/s12.sqlite"
date -u > "$OUT/machine.txt"
MHFGEN_DB="$DB" timeout 150 python3 -m mhfgen tune --preset 370M --tokens 16384 --kernels dkv \
  --trials 14 --no-progress > "$OUT/tune.log" 2>&1 || echo "tune failed (rc $?)" | tee -a "$OUT/tune.log"
date -u >> "$OUT/machine.txt"
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
