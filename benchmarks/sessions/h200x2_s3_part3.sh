#!/usr/bin/env bash
# Third session (2026-11-28), part 3, a 2 x H200 machine, about 4 minutes.
# Usage: bash THIS STATE OUT
#   tests/test_multi_gpu.py: the core op (no-grad direct path and autograd op) and the
#   whole FlashMHF layer on GPU 1 while GPU 0 is the current device (the launchers' device
#   guard); then the norm + router backward launch for tiles above 4096 elements, never
#   measured: sweeps on (H 8, D 256, E 32) and (H 16, D 128, E 64), 16384 tokens
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  nproc; date -u; } > "$STATE/machine.txt" 2>&1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_multi_gpu.py > "$STATE/multi_gpu.log" 2>&1
echo "pytest exit $?" >> "$STATE/multi_gpu.log"
timeout 150 python3 benchmarks/norm_router_check.py --heads 8 --head-dim 256 --experts 32 --sweep \
  > "$STATE/norm_router_d256.log" 2>&1
timeout 150 python3 benchmarks/norm_router_check.py --heads 16 --head-dim 128 --experts 64 --sweep \
  > "$STATE/norm_router_e64.log" 2>&1
date -u >> "$STATE/machine.txt"
tar czf "$OUT/state.tgz" -C "$STATE" .
cat "$STATE/machine.txt" "$STATE/multi_gpu.log" "$STATE/norm_router_d256.log" "$STATE/norm_router_e64.log"
