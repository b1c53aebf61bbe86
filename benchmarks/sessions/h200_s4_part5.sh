#!/usr/bin/env bash
# Session 4, part 5 (1 x H200): the Triton-language forward's unroll / evict_weights knobs
# on the problems it still serves (decode, fp32), beside its dispatched configs.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
timeout 130 python3 benchmarks/triton_knobs_check.py 2>&1 | tee $OUT/triton_knobs.log | tail -25
