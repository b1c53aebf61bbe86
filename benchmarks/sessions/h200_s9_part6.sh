#!/usr/bin/env bash
# Session 9, part 6 (1 x H200): after part 5's inf at 128M fp16 (the joint forward at
# D = 96, the heuristic's), joint scores refused where the head_dim is several chunks and
# the D = 96 joint winner removed: mhfgen verify of the split backward as dispatched again
# (bf16 and fp16, two streams) (docs/figures/*_h200_2026-12-02p*; run 2026-12-02 18:44-18:45 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
timeout 200 python3 -m mhfgen verify --backward split --dtypes bfloat16,float16 \
  > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; cat "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
