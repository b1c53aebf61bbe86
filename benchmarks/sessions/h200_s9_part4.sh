#!/usr/bin/env bash
# Session 9, part 4 (1 x H200), the shipped database as committed after part 3 (joint_grads
# dK/dU/dV winners; persistent forward winners removed): op 'fwd' re-tuned on the three
# problems whose persistent winners left (1.3B and H16 D64 at 16384 tokens, 128M D96 at
# 2048) into a fresh user database; then with it the training step, mhfgen verify of the
# split backward as dispatched (two streams), determinism and its cost, and the reference
# comparison (bench_h200.py, no Helion rows) (docs/figures/*_h200_2026-12-02n*; run 2026-12-02 18:31-18:37 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s9b.sqlite"
date -u > "$OUT/machine.txt"
tune() {
  local trials=$1 limit=$2; shift 2
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels fwd --trials "$trials" \
    --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune fwd $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
tune 10 55 --preset 1.3B --tokens 16384
tune 8 45 --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
tune 6 35 --preset 128M --tokens 2048
grep -E "^fwd|failed" "$OUT/tune.log"
python3 -m mhfgen export -o "$OUT/h200_s9_fwd2.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
date -u >> "$OUT/machine.txt"
timeout 90 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "^|\|rc" "$OUT/train_step.log" | grep "fwdbwd\|rc"
date -u >> "$OUT/machine.txt"
timeout 160 python3 -m mhfgen verify --backward split  \
  > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -4 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 420 ] && timeout 60 python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"; tail -6 "$OUT/determinism.log"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 470 ] && timeout $((585 - SECONDS)) python3 benchmarks/bench_h200.py "$OUT/bench" \
  --budget-s 0 --helion-effort none > "$OUT/bench.log" 2>&1; echo "bench rc $?"
cp "$OUT/bench/summary.md" "$OUT/bench_summary.md" 2>/dev/null; rm -rf "$OUT/bench" "$OUT"/*.sqlite*
head -30 "$OUT/bench_summary.md" 2>/dev/null
date -u >> "$OUT/machine.txt"
