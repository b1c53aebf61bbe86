#!/usr/bin/env bash
# Session 4, part 3b (1 x H200, 66 s, 2026-12-02 00:34 UTC): part 3's table again with the
# cache folder set (the host lacks platformdirs), Helion not autotuned (--helion-effort
# none; helion was still installed on the warm machine from part 3, so its column shows
# Helion's untuned default config), no token sweep. docs/figures/bench_h200_2026-12-01.*
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc; mkdir -p $OUT/bench
timeout 300 python3 benchmarks/bench_h200.py $OUT/bench --budget-s 0 --helion-effort none \
  > $OUT/bench.log 2>&1; echo rc $?; cat $OUT/bench/summary.md | head -60
