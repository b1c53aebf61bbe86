#!/usr/bin/env bash
# Session 11, part 1 (1 x H200), the shipped database as committed: the Gluon dK/dU/dV
# kernels with 3 token splits where the weight tiles make 352 programs (2.67 waves on 132
# SMs: 370M, 1.3B with 4 kv heads, H16 D64 at 64 rows) beside the same configs without, to
# ground a wave-aware token-split heuristic; it also re-measures session 10 part 4's D64
# sweep, whose raw output was lost (docs/figures/*_h200_2026-12-03a*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$OUT/machine.txt"
check() {
  local shape=$1 limit=$2 configs=$3
  (cd benchmarks && timeout "$limit" python3 bwd_dkv_ws_check.py --budget $((limit - 10)) \
    --skip-verify --shapes "$shape" --configs "$configs" >> "$OUT/bwd_dkv_ws_check.log" 2>&1)
  echo "dkv check $shape rc $?" | tee -a "$OUT/bwd_dkv_ws_check.log"
  date -u >> "$OUT/machine.txt"
}
W="dkvt s4 regs 24/240 wg64,dkvt s6 regs 24/240 wg64,dkvt s8 regs 24/240 wg64"
W="$W,dkvt s6 regs 24/240 wg64 ts2,dkvt s4 regs 24/240 wg64 ts3,dkvt s6 regs 24/240 wg64 ts3"
W="$W,dkvt s8 regs 24/240 wg64 ts3,dkvt s6 regs 24/240 wg64 ts4,dkvt s6 regs 24/240 wg64 ts3 exp"
W="$W,dkv_ws s3 regs 24/240,dkv_ws s3 regs 24/240 ts3"
check H16D64 170 "$W"
W="dkv_ws s4 regs 24/240 rows joint jgrads,dkv_ws s4 regs 24/240 rows joint jgrads ts3"
W="$W,dkvt s3 regs 24/240 wg32,dkvt s3 regs 24/240 wg32 ts3,dkvt s4 regs 24/240 wg32 ts3"
W="$W,dkvt s4 regs 40/232 wg32 ts3"
check 370M 130 "$W"
W="dkvt s3 regs 24/240 wg32,dkvt s3 regs 24/240 wg32 ts3,dkvt s4 regs 24/240 wg32 ts3"
W="$W,dkvt s4 regs 40/232 wg32 ts3 exp"
check 1.3B-gqa4 110 "$W"
grep -E "^speed" "$OUT/bwd_dkv_ws_check.log" | cut -c1-150
