#!/usr/bin/env bash
# Session 6, part 5 (1 x H200): the reference comparison (benchmarks/bench_h200.py: mhfgen,
# naive PyTorch, torch.compile, SwiGLU, the layers; forward and forward + backward, peak
# memory) in one process, with the shipped database holding the Gluon dK/dU/dV winners;
# no Helion rows and no token sweep (docs/figures/bench_h200_2026-12-02b.md,
# bench_h200_table_2026-12-02b.csv). Ran 2026-12-02 03:59 UTC, 86 s.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc; mkdir -p $OUT/bench
timeout 420 python3 benchmarks/bench_h200.py $OUT/bench --budget-s 0 --helion-effort none \
  > $OUT/bench.log 2>&1; echo rc $?; cat $OUT/bench/summary.md | head -60
