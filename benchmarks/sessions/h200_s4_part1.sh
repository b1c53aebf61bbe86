#!/usr/bin/env bash
# Session 4, part 1 (1 x H200, 114 s, about 2026-12-01 22:50 UTC): the Gluon forward flash_mhf_fwd_ws against float64 in
# bf16/fp16 on odd shapes, then a config sweep at 16384 tokens beside the Triton forward
# and SwiGLU. Run from the project root on the GPU machine.
source .whl/preamble.sh || exit
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 benchmarks/gluon_fwd_check.py --budget 520 2>&1 | tee "${OUT:-.}/gluon_fwd_check.log"
