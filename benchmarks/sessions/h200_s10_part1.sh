#!/usr/bin/env bash
# Session 10, part 1 (1 x H200): the row-owning dK/dU/dV kernel flash_mhf_bwd_dkvt_ws
# (each consumer warpgroup owns 32 or 64 weight rows end to end, transposed accumulators
# [dK^T | dU^T] and dV^T over all of head_dim) verified against float64 (five odd shapes,
# bf16 and fp16, four configs) and timed beside flash_mhf_bwd_dkv_ws's shipped schedules:
# a sweep at (H16, D64), two configs at D = 128 (docs/figures/*_h200_2026-12-02q*; run 2026-12-02 22:10-22:12 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$OUT/machine.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/machine.txt"
T="dkvt s2 regs 24/240 wg32,dkvt s3 regs 24/240 wg32,dkvt s4 regs 24/240 wg32"
T="$T,dkvt s6 regs 24/240 wg32,dkvt s8 regs 24/240 wg32,dkvt s2 regs 24/240 wg64"
T="$T,dkvt s3 regs 24/240 wg64,dkvt s4 regs 24/240 wg64,dkvt s4 regs 24/240 wg32 ts2"
T="$T,dkvt s4 regs 24/240 wg32 exp,dkvt s4 regs 40/232 wg32"
B="s3 regs 24/240,s4 regs 24/240 rows joint jgrads,s3 regs 24/240 rows joint"
(cd benchmarks && timeout 330 python3 bwd_dkv_ws_check.py --budget 320 \
  --verify-configs "dkvt s4 wg32,dkvt s3 wg64,dkvt s2 ts2 exp wg32,dkvt s6 regs 40/232 wg32" \
  --shapes H16D64,1.3B,1.3B-gqa4 --configs "$B,$T" > "$OUT/bwd_dkv_ws_check.log" 2>&1)
echo "dkv check rc $?" | tee -a "$OUT/bwd_dkv_ws_check.log"
grep -E "^(verify|speed)" "$OUT/bwd_dkv_ws_check.log" | grep -v " ok$" | cut -c1-160
echo "verify ok: $(grep -c '^verify .* ok$' "$OUT/bwd_dkv_ws_check.log")"
date -u >> "$OUT/machine.txt"
