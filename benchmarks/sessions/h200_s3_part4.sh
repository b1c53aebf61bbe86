#!/usr/bin/env bash
# Third session (2026-11-28), part 4, one H200, about 8 minutes. Usage: bash THIS STATE OUT
#   the norm + router kernels' launches, forward and backward, over block_t, warps and dot
#   precision (ieee, tf32x3, tf32): part 3 found the forward at (H 16, D 128, E 64) 3.1x
#   slower than the PyTorch path and the backward default for tiles above 4096 elements
#   1.5x off its sweep's best; the 1.3B preset, (H 16, D 128, E 64), (H 8, D 256, E 32)
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
date -u > "$STATE/machine.txt"
timeout 110 python3 benchmarks/norm_router_check.py --preset 1.3B --sweep > "$STATE/nr_13b.log" 2>&1
timeout 170 python3 benchmarks/norm_router_check.py --heads 16 --head-dim 128 --experts 64 --sweep \
  > "$STATE/nr_e64.log" 2>&1
timeout $((470 - SECONDS)) python3 benchmarks/norm_router_check.py --heads 8 --head-dim 256 \
  --experts 32 --sweep > "$STATE/nr_d256.log" 2>&1
date -u >> "$STATE/machine.txt"
tar czf "$OUT/state.tgz" -C "$STATE" .
grep -v "^    " "$STATE/nr_13b.log"; grep -v "^    " "$STATE/nr_e64.log"; cat "$STATE/nr_d256.log"
