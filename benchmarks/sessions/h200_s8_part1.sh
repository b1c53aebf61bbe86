#!/usr/bin/env bash
# Session 8, part 1 (1 x H200): flash_mhf_bwd_dkv_ws with joint_scores ([S | A] = q [K; U]^T
# by one wgmma chain of twice the width) verified against float64 on the five odd shapes in
# bf16 and fp16, then timed beside the shipped winners ('rows' s3 at D = 128, 'tokens' s3
# at D = 64) (docs/figures/bwd_dkv_ws_check_h200_2026-12-02g.log).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/machine.txt"
date -u >> "$OUT/machine.txt"
cd benchmarks
R="s3 regs 24/240 rows"; T="s3 regs 24/240"
timeout 400 python3 bwd_dkv_ws_check.py --budget 390 \
  --verify-configs "rows s3 joint,s3 joint,rows s2 ts2 exp joint" \
  --configs "$R,$R joint,s4 regs 24/240 rows joint,$T,$T joint,s4 regs 24/240 joint" \
  > "$OUT/bwd_dkv_ws_check.log" 2>&1
echo "dkv check rc $?" | tee -a "$OUT/bwd_dkv_ws_check.log"
grep -v "verify.*| ok" "$OUT/bwd_dkv_ws_check.log" | grep "^|" ; grep -c "verify.*| ok" "$OUT/bwd_dkv_ws_check.log"
date -u >> "$OUT/machine.txt"
