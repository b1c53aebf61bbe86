#!/usr/bin/env bash
# Session 6, part 1 (1 x H200): the Gluon dK/dU/dV backward (flash_mhf_bwd_dkv_ws) verified
# against float64 and timed beside the Triton split backward
# (docs/figures/bwd_dkv_ws_check_h200_2026-12-02b.log). Ran 2026-12-02 03:34-03:36 UTC, 94 s.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
date -u >> "$OUT/machine.txt"
cd benchmarks && timeout 560 python3 bwd_dkv_ws_check.py --budget 540 "$@" 2>&1 | tee "$OUT/bwd_dkv_ws_check.log" | tail -80
date -u >> "$OUT/machine.txt"
