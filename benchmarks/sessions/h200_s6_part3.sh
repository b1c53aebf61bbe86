#!/usr/bin/env bash
# Session 6, part 3 (1 x H200): which bwd_dkv config the dispatcher takes from the shipped
# database (with part 2's winners merged), then mhfgen verify of the split backward as
# dispatched on the presets at 16384 tokens and the odd shapes, bf16/fp16/fp32
# (docs/figures/verify_split_h200_2026-12-02b.*). Ran 2026-12-02 03:49-03:54 UTC, 275 s.
source .whl/preamble.sh || exit; export MHFGEN_CACHE_DIR=/tmp/mc
python3 - <<'PY'
import torch
from mhfgen import dispatch
from mhfgen.spec import KernelSpec
for name, s in {"1.3B": (16, 16, 128, 22, 256), "370M": (8, 8, 128, 11, 256),
                "H16D64": (16, 16, 64, 11, 256), "1.3B-gqa4": (16, 4, 128, 22, 256)}.items():
    spec = KernelSpec(*s, "bfloat16", "sm90")
    for tokens in (2048, 16384):
        print(name, tokens, dispatch.explain_choice("bwd_dkv", spec, tokens, torch.device("cuda")))
PY
timeout 300 python3 -m mhfgen verify --backward split --json $OUT/verify.json > $OUT/verify.txt 2>&1
echo "verify rc $?" >> $OUT/verify.txt
tail -40 $OUT/verify.txt
