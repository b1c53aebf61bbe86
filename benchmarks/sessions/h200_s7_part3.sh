#!/usr/bin/env bash
# Session 7, part 3 (1 x H200), with part 2's winners merged into the shipped database:
# which backward configs dispatch takes; the training step (train_step_check.py); bitwise
# reproducibility and the deterministic mode's cost (bwd_determinism.py); the reference
# comparison (bench_h200.py, no Helion rows); mhfgen verify of the split backward as
# dispatched (docs/figures/*_h200_2026-12-02d*). Ran 2026-12-02 07:51-07:58 UTC, 389 s; verify
# 21 of 21 passed. The bench output files did not come back (too many); its log holds
# the summary.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench"
export MHFGEN_CACHE_DIR=/tmp/mc
date -u > "$OUT/machine.txt"
python3 - <<'PY' > "$OUT/dispatch.txt" 2>&1
import torch
from mhfgen import dispatch
from mhfgen.spec import KernelSpec
for name, s in {"1.3B": (16, 16, 128, 22, 256), "370M": (8, 8, 128, 11, 256),
                "H16D64": (16, 16, 64, 11, 256), "1.3B-gqa4": (16, 4, 128, 22, 256)}.items():
    spec = KernelSpec(*s, "bfloat16", "sm90")
    for tokens in (2048, 16384):
        for op in ("bwd_dq", "bwd_dkv"):
            print(name, tokens, op, dispatch.explain_choice(op, spec, tokens, torch.device("cuda")))
PY
cut -c1-200 "$OUT/dispatch.txt"
timeout 120 python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep -v "^\[" "$OUT/train_step.log" | tail -16
date -u >> "$OUT/machine.txt"
timeout 90 python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"; tail -7 "$OUT/determinism.log"
date -u >> "$OUT/machine.txt"
timeout 150 python3 benchmarks/bench_h200.py "$OUT/bench" --budget-s 0 --helion-effort none \
  > "$OUT/bench.log" 2>&1; echo "bench rc $?"; head -40 "$OUT/bench/summary.md"
date -u >> "$OUT/machine.txt"
timeout $((585 - SECONDS)) python3 -m mhfgen verify --backward split --json "$OUT/verify.json" \
  > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"; tail -30 "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
