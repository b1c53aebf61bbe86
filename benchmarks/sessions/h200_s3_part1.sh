#!/usr/bin/env bash
# Third session (2026-11-28), part 1, one H200, about 6 minutes. Usage: bash THIS STATE OUT
#   after DirectLaunch (launches reuse the compiled binary) and the eager no-grad paths of
#   flash_mhf and norm_router: `mhfgen verify` on every preset and odd shape in three
#   dtypes (the new launch path on every kernel); the dispatch overhead (issue 4's bar);
#   decode, eager and CUDA graph, 1.3B and 370M; the norm + router kernels after their
#   refactor (epsilon constexprs, a launch plan for the forward)
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  nproc; date -u; } > "$STATE/machine.txt" 2>&1
timeout 60 python3 benchmarks/dispatch_overhead.py --json "$STATE/dispatch.json" > "$STATE/dispatch.log" 2>&1
timeout 60 python3 benchmarks/dispatch_overhead.py --json "$STATE/dispatch2.json" > "$STATE/dispatch2.log" 2>&1
timeout 240 python3 cli.py verify --json "$STATE/verify.json" > "$STATE/verify.log" 2>&1
timeout 120 python3 benchmarks/decode.py --shapes 1.3B,370M --tokens 1,8,64 \
  --json "$STATE/decode.json" > "$STATE/decode.log" 2>&1
timeout 60 python3 benchmarks/norm_router_check.py --preset 1.3B > "$STATE/norm_router.log" 2>&1
date -u >> "$STATE/machine.txt"
tar czf "$OUT/state.tgz" -C "$STATE" .
cat "$STATE/machine.txt"; tail -16 "$STATE/dispatch.log"; tail -6 "$STATE/dispatch2.log"
tail -30 "$STATE/verify.log"; tail -30 "$STATE/decode.log"; cat "$STATE/norm_router.log"
