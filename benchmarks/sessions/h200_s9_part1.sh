#!/usr/bin/env bash
# Session 9, part 1 (1 x H200): the joint forward (flash_mhf_fwd_ws joint_scores, never run
# on a GPU before) verified against float64 on six odd shapes in bf16 and fp16 (three
# schedule families), then timed beside the same configs without it on the four speed
# shapes; then op 'fwd' tuned on 370M and 1.3B at 16384 tokens with joint in the space (the
# heuristic, now joint, is each study's first trial) into a fresh user database, and the
# training step with it (docs/figures/*_h200_2026-12-02k*; run 2026-12-02 17:59-18:03 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s9_fwd.sqlite"
date -u > "$OUT/machine.txt"
P="BN64 s4 2x4w regs 24/240"; PP="$P pingpong"; P5="BN64 s5 2x4w regs 24/240"
(cd benchmarks && timeout 150 python3 gluon_fwd_check.py --budget 140 --only joint \
  --shapes 370M,1.3B,H16-D64,128M-D96 \
  --configs "$P,$P joint,$PP,$PP joint,$P5,$P5 joint" > "$OUT/gluon_fwd_check.log" 2>&1)
echo "fwd check rc $?" | tee -a "$OUT/gluon_fwd_check.log"
grep -E "^(verify|speed)" "$OUT/gluon_fwd_check.log" | grep -v "^verify .* ok " | cut -c1-110
echo "verify ok: $(grep -c '^verify .* ok ' "$OUT/gluon_fwd_check.log")"
date -u >> "$OUT/machine.txt"
for preset in 370M 1.3B; do
  timeout 110 python3 -m mhfgen tune --preset $preset --tokens 16384 --kernels fwd --trials 14 \
    --no-progress >> "$OUT/tune.log" 2>&1; echo "tune $preset rc $?" | tee -a "$OUT/tune.log"
done
grep -E "^fwd" "$OUT/tune.log"
date -u >> "$OUT/machine.txt"
timeout 120 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc\| fwd " "$OUT/train_step.log"
python3 -m mhfgen export -o "$OUT/h200_s9_fwd.json" --gpu "NVIDIA H200" > /dev/null 2>&1
rm -f "$OUT"/*.sqlite*
date -u >> "$OUT/machine.txt"
