#!/usr/bin/env bash
# Session 5, part 2 (1 x H200): tune the one-pass backward op 'bwd' (flash_mhf_bwd_fused;
# every candidate checked against float64) on the suite's backward problems into a fresh
# database and export its winners; then bitwise reproducibility and the cost of the
# deterministic mode with those winners dispatched (docs/figures/*_h200_2026-12-02*).
# Ran 2026-12-02 01:53-02:00 UTC, 419 s.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_DB="$OUT/h200_s5.sqlite" MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
date -u >> "$OUT/machine.txt"
tune() {  # preset/flags..., tokens
  timeout 90 python3 -m mhfgen tune "$@" --kernels bwd --trials 20 --no-progress \
    >> "$OUT/tune.log" 2>&1 || echo "tune $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
for preset in 1.3B 370M 128M; do [ $SECONDS -lt 300 ] && tune --preset "$preset" --tokens 16384; done
[ $SECONDS -lt 330 ] && tune --preset 1.3B --kv-heads 4 --tokens 16384
[ $SECONDS -lt 360 ] && tune --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
for tokens in 2048 8192 32768; do
  for preset in 1.3B 370M; do [ $SECONDS -lt 390 ] && tune --preset "$preset" --tokens "$tokens"; done
done
python3 -m mhfgen export -o "$OUT/h200_s5_bwd.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
date -u >> "$OUT/machine.txt"
timeout $((570 - SECONDS)) python3 benchmarks/bwd_determinism.py > "$OUT/determinism.log" 2>&1
echo "determinism rc $?" >> "$OUT/determinism.log"
date -u >> "$OUT/machine.txt"
grep -E "winner|best|default|bwd|failed" "$OUT/tune.log" | tail -50
cat "$OUT/determinism.log" | tail -12
