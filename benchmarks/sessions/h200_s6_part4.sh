#!/usr/bin/env bash
# Session 6, part 4 (1 x H200): flash_mhf_bwd_dkv_ws verified against float64 again after
# the launcher fix for token-split configs on a single row block (part 1 found them reading
# uninitialised memory); no speed rows (docs/figures/bwd_dkv_ws_verify_h200_2026-12-02b.log).
# Ran 2026-12-02 between part 3 (ended 03:54 UTC) and part 5 (03:59 UTC), 65 s: 30 of 30
# rows ok.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
cd benchmarks && timeout 200 python3 bwd_dkv_ws_check.py --budget 180 --shapes "" 2>&1 | tee $OUT/bwd_dkv_ws_verify.log | grep "^|"
