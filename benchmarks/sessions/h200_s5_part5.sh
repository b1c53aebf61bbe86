#!/usr/bin/env bash
# Session 5, part 5 (1 x H200): mhfgen verify with the one-pass backward (op 'bwd' as
# dispatched: flash_mhf_bwd_ws where it supports the shape, else flash_mhf_bwd_fused) on
# the presets at 16384 tokens and the odd shapes, bf16/fp16/fp32
# (docs/figures/verify_bwd_fused_h200_2026-12-02.*).
# Ran 2026-12-02 02:18-02:21 UTC, 188 s.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
timeout 230 python3 -m mhfgen verify --backward fused --json $OUT/verify.json > $OUT/verify.txt 2>&1
echo "verify rc $?" >> $OUT/verify.txt
tail -40 $OUT/verify.txt
