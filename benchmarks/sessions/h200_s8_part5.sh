#!/usr/bin/env bash
# Session 8, part 5 (1 x H200), the last of the session's device time (about 3 minutes):
# the Gluon forward with joint_scores verified against float64 (six odd shapes, bf16 and
# fp16) and timed beside the stored winners' config on 370M and 1.3B; then op 'fwd' tuned
# on 370M at 16384 tokens (the heuristic, now joint, is the study's first trial) into a
# fresh user database, and the training step with it (docs/figures/*_h200_2026-12-02k*).
# NOT RUN: the session had too little device time left to start a machine (2026-12-02
# 13:41 UTC). Before running it, put joint_scores back into the heuristic
# (flash_mhf_fwd_ws.default_config) and the search space.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s8_fwd.sqlite"
date -u > "$OUT/machine.txt"
P="BN64 s4 2x4w regs 24/240"
(cd benchmarks && timeout 70 python3 gluon_fwd_check.py --budget 65 --only 2x4w-joint \
  --shapes 370M,1.3B --configs "$P,$P joint" > "$OUT/gluon_fwd_check.log" 2>&1)
echo "fwd check rc $?" | tee -a "$OUT/gluon_fwd_check.log"
grep -E "^(verify|speed)" "$OUT/gluon_fwd_check.log" | grep -v "^verify .* ok " | cut -c1-110
grep -c "^verify .* ok " "$OUT/gluon_fwd_check.log"
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 85 ] && timeout 35 python3 -m mhfgen tune --preset 370M --tokens 16384 \
  --kernels fwd --trials 2 --no-progress > "$OUT/tune.log" 2>&1; echo "tune rc $?"; grep -E "^fwd" "$OUT/tune.log"
date -u >> "$OUT/machine.txt"
timeout $((175 - SECONDS)) python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "^|\|rc" "$OUT/train_step.log" | grep "fwdbwd\|rc\| fwd "
python3 -m mhfgen export -o "$OUT/h200_s8_fwd.json" --gpu "NVIDIA H200" > /dev/null 2>&1
rm -f "$OUT"/*.sqlite*
date -u >> "$OUT/machine.txt"
