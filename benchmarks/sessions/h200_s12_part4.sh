#!/usr/bin/env bash
# Session 12, part 4 (1 x H200): mhfgen verify of the split backward in bf16 and fp16 with
# the shipped database as committed (370M's dK/dU/dV re-tuned in context) and the Gluon
# dK/dU/dV heuristics without token splits from two waves up (docs/figures/*_h200_2026-12-03g*).
source .whl/preamble.sh || exit
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB=/tmp/none.sqlite
date -u > "$OUT/machine.txt"
timeout 170 python3 -m mhfgen verify --backward split --dtypes bfloat16,float16 > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -5 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
