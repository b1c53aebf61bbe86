#!/usr/bin/env bash
# Session 4, part 4 (1 x H200, 16 s, 2026-12-02 00:35 UTC): host overhead per call after the
# registry's per-op dispatch (docs/figures/dispatch_overhead_h200_2026-12-01.md).
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
timeout 170 python3 benchmarks/dispatch_overhead.py 2>&1 | tail -30
