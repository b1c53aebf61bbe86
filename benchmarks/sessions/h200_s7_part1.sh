#!/usr/bin/env bash
# Session 7, part 1 (1 x H200): flash_mhf_bwd_dkv_ws with its new 'rows' split (64-token
# row tiles, four ring slots at D = 128) verified against float64 and timed beside the
# 'tokens' split, then the Gluon dQ/dR check again after the launcher refactor
# (docs/figures/bwd_dkv_ws_check_h200_2026-12-02d.log, bwd_dq_ws_check_h200_2026-12-02d.log).
# Ran 2026-12-02 07:36-07:40 UTC, 198 s: 50 of 50 dK/dU/dV and 20 of 20 dQ/dR verify rows ok.
source .whl/preamble.sh || exit
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export MHFGEN_CACHE_DIR=/tmp/mhfgen_cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
date -u >> "$OUT/machine.txt"
cd benchmarks
timeout 380 python3 bwd_dkv_ws_check.py --budget 370 > "$OUT/bwd_dkv_ws_check.log" 2>&1
echo "dkv check rc $?" | tee -a "$OUT/bwd_dkv_ws_check.log"
grep -v "verify.*| ok" "$OUT/bwd_dkv_ws_check.log" | grep "^|" ; grep -c "verify.*| ok" "$OUT/bwd_dkv_ws_check.log"
date -u >> "$OUT/machine.txt"
timeout $((560 - SECONDS)) python3 bwd_dq_ws_check.py --budget $((540 - SECONDS)) > "$OUT/bwd_dq_ws_check.log" 2>&1
echo "dq check rc $?" | tee -a "$OUT/bwd_dq_ws_check.log"
grep "^|" "$OUT/bwd_dq_ws_check.log" | grep -v "verify.*| ok"; grep -c "verify.*| ok" "$OUT/bwd_dq_ws_check.log"
date -u >> "$OUT/machine.txt"
