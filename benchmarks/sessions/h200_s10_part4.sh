#!/usr/bin/env bash
# Session 10, part 4 (1 x H200), the shipped database as committed after part 3: the
# 64-row flash_mhf_bwd_dkvt_ws at H16 D64 with deeper rings, token splits against the
# 2.67 waves of its 352 programs, the exp sigmoid and another register split, beside the
# shipped winner; then mhfgen verify of the split backward as dispatched in all three
# dtypes (fp32 included) (docs/figures/*_h200_2026-12-02t*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
W="dkvt s4 regs 24/240 wg64,dkvt s6 regs 24/240 wg64,dkvt s8 regs 24/240 wg64"
W="$W,dkvt s6 regs 24/240 wg64 ts2,dkvt s6 regs 24/240 wg64 ts3,dkvt s6 regs 24/240 wg64 ts4"
W="$W,dkvt s6 regs 24/240 wg64 exp,dkvt s6 regs 40/232 wg64"
(cd benchmarks && timeout 150 python3 bwd_dkv_ws_check.py --budget 140 --skip-verify \
  --shapes H16D64 --configs "$W" > "$OUT/bwd_dkv_ws_check.log" 2>&1)
echo "dkv check rc $?" | tee -a "$OUT/bwd_dkv_ws_check.log"
grep -E "^speed" "$OUT/bwd_dkv_ws_check.log" | cut -c1-150
date -u >> "$OUT/machine.txt"
timeout 330 python3 -m mhfgen verify --backward split > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -26 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
