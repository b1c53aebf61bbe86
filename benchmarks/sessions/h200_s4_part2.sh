#!/usr/bin/env bash
# Session 4, part 2 (1 x H200, 550 s, 2026-12-02 00:09 UTC): with the kernel registry and the Gluon
# forward dispatched, (1) tune the forward op (one joint study over flash_mhf_fwd_ws and
# flash_mhf_fwd) for the shipped suite's forward problems above decode size, into a fresh
# database; (2) export the winners; (3) mhfgen verify (presets at 16384 tokens and the odd
# shapes, bf16/fp16/fp32) with those winners dispatched. Run from the project root.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_DB="$OUT/h200_s4.sqlite" MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
date -u >> "$OUT/machine.txt"
tune() {  # preset/flags..., tokens
  timeout 100 python3 -m mhfgen tune "$@" --kernels fwd --trials 16 --no-progress \
    >> "$OUT/tune.log" 2>&1 || echo "tune $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
for preset in 1.3B 370M 128M; do
  for tokens in 16384 2048 8192 32768; do
    [ $SECONDS -lt 330 ] && tune --preset "$preset" --tokens "$tokens"
  done
done
[ $SECONDS -lt 360 ] && tune --preset 1.3B --kv-heads 4 --tokens 16384
[ $SECONDS -lt 380 ] && tune --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
python3 -m mhfgen export -o "$OUT/h200_s4_fwd.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
date -u >> "$OUT/machine.txt"
timeout $((560 - SECONDS)) python3 -m mhfgen verify --json "$OUT/verify.json" > "$OUT/verify.txt" 2>&1
echo "verify rc $?" >> "$OUT/verify.txt"
date -u >> "$OUT/machine.txt"
grep -E "^(kernel|winner|  )|best|default|fwd" "$OUT/tune.log" | tail -60
cat "$OUT/verify.txt" | tail -40
