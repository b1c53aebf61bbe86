#!/usr/bin/env bash
# Session 8, part 2 (1 x H200): flash_mhf_bwd_dq_ws with joint_scores verified against
# float64 (five odd shapes, bf16 and fp16) and timed; then op 'bwd_dkv' re-tuned (both
# variants, joint_scores now in the space) on the nine D = 128 problems of the shipped
# database, and op 'bwd_dq' on as many of its ten as the call's time allows; fresh
# database, exported (docs/figures/*_h200_2026-12-02h*).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_DB="$OUT/h200_s8.sqlite" MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
date -u > "$OUT/machine.txt"
(cd benchmarks && timeout 120 python3 bwd_dq_ws_check.py --budget 110 \
  --verify-configs "joint,s2 exp joint" --shapes 1.3B,370M,H16D64 > "$OUT/bwd_dq_ws_check.log" 2>&1)
echo "dq check rc $?" | tee -a "$OUT/bwd_dq_ws_check.log"
grep "^|" "$OUT/bwd_dq_ws_check.log" | grep -v "verify.*| ok"; grep -c "verify.*| ok" "$OUT/bwd_dq_ws_check.log"
date -u >> "$OUT/machine.txt"
tune() {
  local kernels=$1 trials=$2 limit=$3; shift 3
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels "$kernels" --trials "$trials" \
    --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune $kernels $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
[ $SECONDS -lt 200 ] && tune dkv 10 50 --preset 1.3B --tokens 16384
[ $SECONDS -lt 240 ] && tune dkv 10 40 --preset 370M --tokens 16384
[ $SECONDS -lt 280 ] && tune dkv 10 45 --preset 1.3B --kv-heads 4 --tokens 16384
for tokens in 2048 8192 32768; do
  for preset in 1.3B 370M; do [ $SECONDS -lt 420 ] && tune dkv 8 40 --preset "$preset" --tokens "$tokens"; done
done
date -u >> "$OUT/machine.txt"
[ $SECONDS -lt 480 ] && tune dq 8 35 --preset 1.3B --tokens 16384
[ $SECONDS -lt 515 ] && tune dq 8 30 --preset 370M --tokens 16384
[ $SECONDS -lt 545 ] && tune dq 8 30 --heads 16 --head-dim 64 --intermediate 2816 --experts 11 --tokens 16384
python3 -m mhfgen export -o "$OUT/h200_s8_bwd.json" --gpu "NVIDIA H200" >> "$OUT/tune.log" 2>&1
grep -E "^(flash|bwd)|failed" "$OUT/tune.log" | tail -24
date -u >> "$OUT/machine.txt"
