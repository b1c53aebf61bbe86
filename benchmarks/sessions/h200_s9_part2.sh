#!/usr/bin/env bash
# Session 9, part 2 (1 x H200): flash_mhf_bwd_dkv_ws with joint_grads (the transposed
# accumulators, [dK^T | dU^T] += q^T [dS | dA] as one N = 128 wgmma chain) verified against
# float64 (five odd shapes, bf16 and fp16, three configs; n/a at D = 64) and timed beside
# the shipped 'rows s3 joint' on 1.3B, 370M and 1.3B with 4 kv heads; and two more joint
# forward families verified (1 x 8-warp consumer; 32-column tiles, 6 slots, persistent)
# (docs/figures/*_h200_2026-12-02l*; run 2026-12-02 18:12-18:14 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
R="regs 24/240 rows joint"
(cd benchmarks && timeout 200 python3 bwd_dkv_ws_check.py --budget 190 \
  --verify-configs "rows s3 joint jgrads,rows s3 jgrads,rows s2 ts2 exp joint jgrads" \
  --shapes 370M,1.3B,1.3B-gqa4 --configs "s3 $R,s3 $R jgrads,s4 $R jgrads,s3 regs 24/240 rows jgrads" \
  > "$OUT/bwd_dkv_ws_check.log" 2>&1)
echo "dkv check rc $?" | tee -a "$OUT/bwd_dkv_ws_check.log"
grep -E "^(verify|speed)" "$OUT/bwd_dkv_ws_check.log" | grep -v " ok$" | cut -c1-150
echo "verify ok: $(grep -c '^verify .* ok$' "$OUT/bwd_dkv_ws_check.log")"
date -u >> "$OUT/machine.txt"
(cd benchmarks && timeout 90 python3 gluon_fwd_check.py --budget 80 --shapes "" \
  --only 1x8w-joint bn32-s6-persistent-joint > "$OUT/gluon_fwd_check.log" 2>&1)
echo "fwd check rc $?" | tee -a "$OUT/gluon_fwd_check.log"
grep -E "^verify" "$OUT/gluon_fwd_check.log" | grep -v " ok " | cut -c1-110
echo "fwd verify ok: $(grep -c '^verify .* ok ' "$OUT/gluon_fwd_check.log")"
date -u >> "$OUT/machine.txt"
