#!/usr/bin/env bash
# Session 8, part 3 (1 x H200), with part 2's twelve winners merged into the shipped
# database (joint scores in both Gluon backward kernels): the training step
# (train_step_check.py, two streams), the reference comparison (bench_h200.py, no Helion
# rows), mhfgen verify of the split backward as dispatched, determinism and its cost; then
# op 'bwd_dq' tuned at the shipped problems part 2 did not reach, into a fresh database,
# exported (docs/figures/*_h200_2026-12-02i*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
timeout 110 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep -v "^\[" "$OUT/train_step.log" | tail -16
date -u >> "$OUT/machine.txt"
timeout 160 python3 benchmarks/bench_h200.py "$OUT/bench" --budget-s 0 --helion-effort none \
  > "$OUT/bench.log" 2>&1; echo "bench rc $?"
cp "$OUT/bench/summary.md" "$OUT/bench_summary.md" 2>/dev/null; rm -rf "$OUT/bench"
head -30 "$OUT/bench_summary.md"
date -u >> "$OUT/machine.txt"
MHFGEN_BACKWARD_STREAMS=1 timeout 170 python3 -m mhfgen verify --backward split \
  --json "$OUT/verify.json" > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -4 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 420 ] && timeout 70 python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"; tail -6 "$OUT/determinism.log"
date -u >> "$OUT/machine.txt"
export MHFGEN_DB="$OUT/h200_s8_dq.sqlite"
tune() {
  local limit=$1; shift
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels dq --trials 6 --no-progress \
    >> "$OUT/tune.log" 2>&1 || echo "tune dq $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
[ $SECONDS -lt 540 ] && tune 30 --preset 1.3B --kv-heads 4 --tokens 16384
for tokens in 2048 8192 32768; do
  for preset in 1.3B 370M; do [ $SECONDS -lt 555 ] && tune 25 --preset "$preset" --tokens "$tokens"; done
done
python3 -m mhfgen export -o "$OUT/h200_s8_dq.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
grep -E "^bwd|failed" "$OUT/tune.log" | tail -8
date -u >> "$OUT/machine.txt"
