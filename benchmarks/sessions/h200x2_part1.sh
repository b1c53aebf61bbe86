#!/usr/bin/env bash
# Part 1 of the 2026-11-28 measurements on a 2 x H200 machine (device tool kind
# nvidia-h200-x2), about 9 minutes. Usage, from the repo root: bash THIS STATE OUT
#   GPU 0: tunes the suite's presets at 16384, 2048, 8192 and 32768 tokens (the shipped
#          database, issue 5; tuned vs default, issue 4)
#   GPU 1: the warp-specialisation sweep (issue 3), `mhfgen verify` (issue 3), then the
#          suite's decode shapes (1, 8, 64 tokens), Hkv < H and D = 64
# STATE keeps the tuning outputs (resumable: a later part finishes unfinished shapes);
# OUT receives one tarball of everything.
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  date -u; } > "$STATE/machine.txt" 2>&1
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 500 python3 benchmarks/tuning_figures.py "$STATE/tf" --part suite \
    --shapes 1-3,13-21 --trials 16 --jobs 14 --no-report
) > "$STATE/gpu0.log" 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 150 python3 benchmarks/kernel_sweep.py --shapes 1.3B --grid --focused \
    --kernels flash_mhf_fwd,flash_mhf_bwd_dq --knob warp_specialize --json "$STATE/ws.json" \
    > "$STATE/ws.txt" 2>&1
  timeout 200 python3 cli.py verify --json "$STATE/verify.json" > "$STATE/verify.txt" 2>&1
  timeout $((510 - SECONDS)) python3 benchmarks/tuning_figures.py "$STATE/tf" --part suite \
    --shapes 4-12,22,23 --trials 16 --jobs 14 --no-report
) > "$STATE/gpu1.log" 2>&1 &
wait
python3 benchmarks/tuning_figures.py "$STATE/tf" --part report > "$STATE/report.txt" 2>&1
tar czf "$OUT/state.tgz" -C "$STATE" .
tail -5 "$STATE/ws.txt" "$STATE/verify.txt" "$STATE/gpu0.log" "$STATE/gpu1.log"
cat "$STATE/report.txt" | head -60
