#!/usr/bin/env bash
# Fourth session, a 2 x H200 machine, about 4 minutes: FlashMHF in distributed training.
# Usage: bash THIS STATE OUT      (from the project root, with .whl/ beside it)
#   benchmarks/distributed_h200x2.py under torchrun, 2 ranks, NCCL: parity of DDP, FSDP2
#   (eager and compiled, fp32) and tensor parallelism over heads (fp32, bf16) against one
#   process; the 1.3B layer's training step (bf16, 8 x 2048 tokens) at TP=2 against 1 GPU.
#   Log, JSON and the dispatcher's choices in STATE; the table last on stdout.
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE" "$OUT"
source .whl/preamble.sh || exit 1
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  nvidia-smi topo -m
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
'nccl', torch.cuda.nccl.version())"
  nproc; date -u; } > "$STATE/machine.txt" 2>&1
timeout 225 python3 -m torch.distributed.run --standalone --nproc_per_node 2 \
  benchmarks/distributed_h200x2.py --json "$STATE/distributed.json" \
  > "$STATE/distributed.log" 2>&1
echo "distributed_h200x2 exit $?" >> "$STATE/distributed.log"
date -u >> "$STATE/machine.txt"
cp "$STATE/distributed.json" "$OUT/" 2>/dev/null
tar czf "$OUT/state.tgz" -C "$STATE" .
cat "$STATE/machine.txt"
grep -v '^\[rank' "$STATE/distributed.log" | tail -40
