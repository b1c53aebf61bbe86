#!/usr/bin/env bash
# Part 5 of the 2026-11-28 measurements, one H200, about 4.5 minutes, after the fused
# norm + router kernels. Usage: bash THIS STATE OUT
#   the norm + router kernels against the PyTorch path (values, time, memory); the reference
#   comparison again (bench_h200.py: the layer rows); the odd shapes of `mhfgen verify` in
#   three dtypes (the part 1 run was cut before its last rows); the dispatch overhead with
#   the benchmark's explicit-config row fixed
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
timeout 90 python3 benchmarks/norm_router_check.py --preset 1.3B > "$STATE/p5_norm_router.log" 2>&1
timeout 60 python3 benchmarks/norm_router_check.py --preset 370M >> "$STATE/p5_norm_router.log" 2>&1
timeout 200 python3 benchmarks/bench_h200.py "$STATE/bench" --budget-s 120 > "$STATE/p5_bench.log" 2>&1
timeout 100 python3 cli.py verify --presets "" --json "$STATE/verify_odd.json" > "$STATE/p5_verify.log" 2>&1
timeout 60 python3 benchmarks/dispatch_overhead.py --json "$STATE/dispatch.json" > "$STATE/p5_dispatch.log" 2>&1
tar czf "$OUT/state.tgz" -C "$STATE" .
cat "$STATE/p5_norm_router.log"; tail -22 "$STATE/p5_bench.log"; cat "$STATE/p5_verify.log"
tail -14 "$STATE/p5_dispatch.log"
