#!/usr/bin/env bash
# Session 4, part 3 (1 x H200, about 8 minutes): the comparison table of
# benchmarks/bench_h200.py (mhfgen with the Gluon forward dispatched and the session's
# tuned forward winners, naive PyTorch, torch.compile, SwiGLU, the layers) with Helion's
# autotuned forward in the same run (helion 1.4.0 from .whl_helion), no token sweep.
# Usage: bash THIS DB  (DB: the database part 2 tuned, or '' for the shipped one alone)
# As run on 2026-12-02 00:27 UTC (shipped database, no DB argument): the version line
# failed (helion has no __version__) and every mhfgen row failed to import platformdirs,
# which the H200 host lacks (MHFGEN_CACHE_DIR unset: mhfgen asks platformdirs for the
# cache folder); the naive, torch.compile, SwiGLU and Helion rows ran
# (docs/figures/bench_h200_helion_2026-12-01.*). Part 3b re-ran the mhfgen rows.
source .whl/preamble.sh || exit
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl_helion/*.whl || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -n "${1:-}" ] && export MHFGEN_DB="$1"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import helion, torch, triton; print('helion', helion.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/machine.txt"
date -u >> "$OUT/machine.txt"
timeout 560 python3 benchmarks/bench_h200.py "$OUT/bench" --budget-s 0 --helion-effort full \
  --helion-budget 110 > "$OUT/bench.log" 2>&1
echo "bench rc $?" >> "$OUT/bench.log"
date -u >> "$OUT/machine.txt"
cat "$OUT/bench/summary.md" 2>/dev/null || tail -40 "$OUT/bench.log"
