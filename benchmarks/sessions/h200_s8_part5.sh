#!/usr/bin/env bash
# Session 8, part 5 (1 x H200), the last of the session's device time: the Gluon forward
# with joint_scores verified against float64 (six odd shapes, bf16 and fp16) and timed
# beside the stored winners' configs on 370M, 1.3B and H16 D64; then op 'fwd' tuned on
# 370M at 16384 tokens (the heuristic, joint, is the study's first trial) into a fresh
# user database, and the training step with it (docs/figures/*_h200_2026-12-02k*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s8_fwd.sqlite"
date -u > "$OUT/machine.txt"
P="BN64 s4 2x4w regs 24/240"; Q="BN64 s6 2x4w regs 24/240 persistent"
(cd benchmarks && timeout 100 python3 gluon_fwd_check.py --budget 95 --only 2x4w-joint \
  --shapes 370M,1.3B,H16-D64 --configs "$P,$P joint,$Q,$Q joint" > "$OUT/gluon_fwd_check.log" 2>&1)
echo "fwd check rc $?" | tee -a "$OUT/gluon_fwd_check.log"
grep -E "^(verify|speed)" "$OUT/gluon_fwd_check.log" | grep -v " ok .*e-0[34] *$" | cut -c1-110
grep -c "^verify .* ok " "$OUT/gluon_fwd_check.log"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 130 ] && timeout 45 python3 -m mhfgen tune --preset 370M --tokens 16384 \
  --kernels fwd --trials 3 --no-progress > "$OUT/tune.log" 2>&1; echo "tune rc $?"; grep -E "^fwd" "$OUT/tune.log"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 190 ] && timeout 110 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc\| fwd " "$OUT/train_step.log" | grep "^|\|rc"
date -u >> "$OUT/machine.txt"
