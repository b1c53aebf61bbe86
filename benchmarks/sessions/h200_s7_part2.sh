#!/usr/bin/env bash
# Session 7, part 2 (1 x H200): re-tune op 'bwd_dkv' (a joint study of flash_mhf_bwd_dkv_ws,
# now with its 'rows' split, and flash_mhf_bwd_dkv; every candidate checked against float64)
# on the ten problems of the shipped database, then op 'bwd_dq' (both dQ/dR variants) at the
# token counts where the shipped database has only Triton records; fresh database, exported
# (docs/figures/tune_bwd_h200_2026-12-02d.log, h200_s7_bwd_2026-12-02d.json). Ran 2026-12-02
# 07:43-07:49 UTC, 318 s: all 16 problems tuned, no failed candidate.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_DB="$OUT/h200_s7.sqlite" MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
date -u > "$OUT/machine.txt"
tune() {
  local kernels=$1 trials=$2 limit=$3; shift 3
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels "$kernels" --trials "$trials" \
    --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune $kernels $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
[ $SECONDS -lt 60 ] && tune dkv 12 60 --preset 1.3B --tokens 16384
[ $SECONDS -lt 110 ] && tune dkv 12 45 --preset 370M --tokens 16384
[ $SECONDS -lt 150 ] && tune dkv 12 45 --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
[ $SECONDS -lt 190 ] && tune dkv 12 50 --preset 1.3B --kv-heads 4 --tokens 16384
for tokens in 2048 8192 32768; do
  for preset in 1.3B 370M; do [ $SECONDS -lt 330 ] && tune dkv 10 45 --preset "$preset" --tokens "$tokens"; done
done
date -u >> "$OUT/machine.txt"
for tokens in 2048 8192 32768; do
  for preset in 1.3B 370M; do [ $SECONDS -lt 520 ] && tune dq 8 35 --preset "$preset" --tokens "$tokens"; done
done
python3 -m mhfgen export -o "$OUT/h200_s7_bwd.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
grep -E "^(flash|bwd)|failed" "$OUT/tune.log" | tail -24
date -u >> "$OUT/machine.txt"
