#!/usr/bin/env bash
# Part 3 of the 2026-11-28 measurements on a 2 x H200 machine, about 4 minutes:
# one cold `mhfgen tune` timed from outside (issue 4), then trial throughput of
# `mhfgen tune --workers 2` against 1 worker (issue 6). Usage: bash THIS STATE OUT
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/tuning_figures.py "$STATE/tf" \
  --part walltime --no-report > "$STATE/p3_walltime.log" 2>&1
timeout 330 python3 benchmarks/workers_throughput.py "$STATE/workers" > "$STATE/p3_workers.log" 2>&1
python3 benchmarks/tuning_figures.py "$STATE/tf" --part report > "$STATE/report.txt" 2>&1
tar czf "$OUT/state.tgz" -C "$STATE" .
tail -30 "$STATE/p3_walltime.log"; tail -30 "$STATE/p3_workers.log"
