#!/usr/bin/env bash
# Session 5, part 3 (1 x H200): the Gluon one-pass backward flash_mhf_bwd_ws, verified
# against float64 on odd shapes with a hang watchdog, then a config sweep at 16384 tokens
# beside the split backward as dispatched (docs/figures/bwd_ws_check_h200_2026-12-02.log).
# Ran 2026-12-02 02:06-02:09 UTC, 184 s.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
timeout 560 python3 benchmarks/bwd_ws_check.py --budget 520 2>&1 | tee $OUT/bwd_ws_check.log | grep -v "^|" | tail -120
