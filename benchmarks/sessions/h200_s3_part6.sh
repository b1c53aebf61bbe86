#!/usr/bin/env bash
# Third session (2026-11-28), part 6, one H200, about 80 s (the session's last device
# seconds). Usage: bash THIS STATE OUT
#   the host path of the final code (DirectLaunch with its device check and Triton version
#   gate, split counters keyed by the raw stream): dispatch overhead once; decode at 1 and
#   8 tokens on 1.3B, eager and CUDA graph
set -u
STATE=${1:?state dir}; OUT=${2:?out dir}
mkdir -p "$STATE"
export PYTHONUNBUFFERED=1
date -u > "$STATE/machine.txt"
timeout 35 python3 benchmarks/dispatch_overhead.py --json "$STATE/dispatch.json" > "$STATE/dispatch.log" 2>&1
timeout 45 python3 benchmarks/decode.py --shapes 1.3B --tokens 1,8 --json "$STATE/decode.json" \
  > "$STATE/decode.log" 2>&1
date -u >> "$STATE/machine.txt"
tar czf "$OUT/state.tgz" -C "$STATE" .
tail -16 "$STATE/dispatch.log"; cat "$STATE/decode.log"
