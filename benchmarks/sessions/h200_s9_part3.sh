#!/usr/bin/env bash
# Session 9, part 3 (1 x H200): which of 32-column tiles, 6 slots, persistence and joint
# scores makes the forward's bn32-s6-persistent-joint wrong on the 1.3B slice (part 2);
# then op 'bwd_dkv' re-tuned on the nine D = 128 problems of the shipped database with
# joint_grads in the space (the heuristic, 'rows' s4 joint jgrads without grouped heads, is
# each study's first trial) into a fresh database; every failed trial's reason; and the
# training step with the new winners (docs/figures/*_h200_2026-12-02m*; run 2026-12-02 18:17-18:22 UTC).
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mc MHFGEN_DB="$OUT/h200_s9.sqlite"
date -u > "$OUT/machine.txt"
(cd benchmarks && timeout 100 python3 gluon_fwd_check.py --budget 90 --shapes "" \
  --only bn32 persistent-joint > "$OUT/gluon_fwd_check.log" 2>&1)
echo "fwd check rc $?" | tee -a "$OUT/gluon_fwd_check.log"
grep -E "^verify" "$OUT/gluon_fwd_check.log" | grep -v " ok " | cut -c1-110
echo "fwd verify ok: $(grep -c '^verify .* ok ' "$OUT/gluon_fwd_check.log")"
date -u >> "$OUT/machine.txt"
tune() {
  local kernels=$1 trials=$2 limit=$3; shift 3
  timeout "$limit" python3 -m mhfgen tune "$@" --kernels "$kernels" --trials "$trials" \
    --no-progress >> "$OUT/tune.log" 2>&1 \
    || echo "tune $kernels $* failed or timed out (rc $?)" | tee -a "$OUT/tune.log"
}
tune dkv 10 55 --preset 370M --tokens 16384
tune dkv 10 60 --preset 1.3B --tokens 16384
tune dkv 8 50 --preset 1.3B --kv-heads 4 --tokens 16384
for tokens in 2048 8192 32768; do
  for preset in 370M 1.3B; do [ $SECONDS -lt 400 ] && tune dkv 8 45 --preset "$preset" --tokens "$tokens"; done
done
grep -E "^(bwd_dkv|flash)|failed" "$OUT/tune.log"
python3 - "$MHFGEN_DB" <<'PY' | tee -a "$OUT/tune.log"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute("select heads, kv_heads, tokens, stage, reason, config from trials "
                     "where status = 'failed'"):
    print("failed trial:", *row)
PY
date -u >> "$OUT/machine.txt"
timeout $((560 - SECONDS)) python3 benchmarks/train_step_check.py > "$OUT/train_step.log" 2>&1
echo "train_step rc $?" >> "$OUT/train_step.log"; grep "fwdbwd\|rc" "$OUT/train_step.log" | grep "^|\|rc"
python3 -m mhfgen export -o "$OUT/h200_s9_dkv.json" --gpu "NVIDIA H200" > /dev/null 2>&1
rm -f "$OUT"/*.sqlite*
date -u >> "$OUT/machine.txt"
