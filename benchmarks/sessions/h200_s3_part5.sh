#!/usr/bin/env bash
# Third session (2026-11-28), part 5, one H200, about 4.5 minutes. Usage: bash THIS STATE OUT
#   after the norm + router launches chosen from part 4's sweeps (TF32 router dots for
#   bf16/fp16, 3xTF32 for fp32): the kernels against the PyTorch path on the three swept
#   shapes and in fp32; the whole layer against float64 next to PyTorch's own layer
#   (benchmarks/layer_check.py); the layer's speed (mhfgen bench --layer rows)
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
date -u > "$STATE/machine.txt"
{ timeout 40 python3 benchmarks/norm_router_check.py --preset 1.3B
  timeout 40 python3 benchmarks/norm_router_check.py --preset 1.3B --dtype float32
  timeout 40 python3 benchmarks/norm_router_check.py --heads 16 --head-dim 128 --experts 64
  timeout 40 python3 benchmarks/norm_router_check.py --heads 8 --head-dim 256 --experts 32
} > "$STATE/norm_router.log" 2>&1
{ timeout 60 python3 benchmarks/layer_check.py --preset 1.3B --tokens 4096
  timeout 40 python3 benchmarks/layer_check.py --preset 370M --tokens 4096 --dtype float32
} > "$STATE/layer_check.log" 2>&1
timeout $((255 - SECONDS)) python3 cli.py bench --preset 1.3B --methods layer_mhfgen,layer_swiglu \
  --json "$STATE/layer_bench.json" > "$STATE/layer_bench.log" 2>&1
date -u >> "$STATE/machine.txt"
tar czf "$OUT/state.tgz" -C "$STATE" .
cat "$STATE/norm_router.log" "$STATE/layer_check.log"; tail -12 "$STATE/layer_bench.log"
