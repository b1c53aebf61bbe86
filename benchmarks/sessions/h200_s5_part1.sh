#!/usr/bin/env bash
# Session 5, part 1 (1 x H200): the one-pass backward flash_mhf_bwd_fused, verified against
# float64 on odd shapes, then a config sweep at 16384 tokens beside the split backward
# (docs/figures/bwd_fused_sweep_h200_2026-12-02.log).
# Ran 2026-12-02 01:37-01:40 UTC, 177 s.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 560 python3 benchmarks/bwd_fused_sweep.py --jobs 14 2>&1 | tee $OUT/bwd_fused_sweep.log | grep -v "^|" | tail -150
