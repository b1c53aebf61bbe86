#!/usr/bin/env bash
# Session 4, part 5 (1 x H200): the Triton-language forward's unroll / evict_weights knobs
# on the problems it still serves (decode, fp32), beside its dispatched configs. Ran
# 2026-12-02 00:44 UTC, 132 s: the 130-s timeout cut the fp32 rows after unroll=2
# (docs/figures/triton_knobs_h200_2026-12-02.log).
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
timeout 130 python3 benchmarks/triton_knobs_check.py 2>&1 | tee $OUT/triton_knobs.log | tail -25
