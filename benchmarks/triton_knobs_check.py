"""The Triton-language forward's Helion knobs (unroll, evict_weights) on a GPU, one run.

    python3 benchmarks/triton_knobs_check.py

For the problems flash_mhf_fwd still serves on an H100/H200 (bf16 decode at 8 and 64
tokens, fp32 at 2048 tokens, on the 1.3B and 370M presets), the dispatcher's config for
flash_mhf_fwd, then the same with unroll 2 / 4 and evict_weights: error against float64
(the bar of mhfgen.tolerances) and the median time of do_bench. Prints one table.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from triton.testing import do_bench

from mhfgen import dispatch, reference
from mhfgen.kernels.configs import spec_of
from mhfgen.presets import PRESETS
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.validation import check_flash_mhf_inputs
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
from mhfgen.verification import Case, make_inputs

KNOBS = [
    dict(),
    dict(unroll=2),
    dict(unroll=4),
    dict(evict_weights=True),
    dict(unroll=2, evict_weights=True),
]
PROBLEMS = [
    ("1.3B", torch.bfloat16, 8),
    ("1.3B", torch.bfloat16, 64),
    ("370M", torch.bfloat16, 64),
    ("1.3B", torch.float32, 2048),
]


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        description="The Triton-language forward's unroll and evict_weights knobs against "
        "its dispatched config on a CUDA GPU: error against float64 and median "
        "time per problem; prints one table."
    ).parse_args(argv)
    print(torch.cuda.get_device_name(), torch.__version__)
    rows = []
    for name, dtype, tokens in PROBLEMS:
        p = PRESETS[name]
        case = Case(name, 1, tokens, p.heads, p.heads, p.head_dim, p.experts, p.expert_dim)
        q, k, u, v, r, _ = make_inputs(case, dtype, "cuda", seed=3)
        ref = reference.flash_mhf(q.double(), k.double(), u.double(), v.double(), r.double())
        spec = spec_of(check_flash_mhf_inputs(q, k, u, v, r), q)
        base = dispatch.explain_choice("flash_mhf_fwd", spec, tokens, q.device).config
        base_ms = None
        for knobs in KNOBS:
            config = dataclasses.replace(base, **knobs)
            label = " ".join(f"{k}={v}" for k, v in knobs.items()) or "dispatched config"
            try:
                o = flash_mhf_fwd(q, k, u, v, r, config=config)
                err = relative_error(o, ref)
                ms = do_bench(
                    lambda: flash_mhf_fwd(q, k, u, v, r, config=config),
                    warmup=10,
                    rep=60,
                    return_mode="median",
                )
                base_ms = base_ms or ms
                ok = "ok" if err <= tolerance(spec.dtype) else "WRONG"
                rows.append(
                    (
                        f"{name} {spec.dtype} T={tokens}",
                        label,
                        ok,
                        f"{err:.2e}",
                        f"{ms * 1e3:.1f}",
                        f"{base_ms / ms:.3f}",
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a knob that fails is a row, not an end
                rows.append(
                    (
                        f"{name} {spec.dtype} T={tokens}",
                        label,
                        f"error {type(exc).__name__}",
                        str(exc)[:40],
                        "",
                        "",
                    )
                )
            print(rows[-1], flush=True)
    print(
        f"\n{'problem':24s} {'config':28s} {'status':8s} {'error':>9s} {'us':>8s} {'speed-up':>8s}"
    )
    for row in rows:
        print(f"{row[0]:24s} {row[1]:28s} {row[2]:8s} {row[3]:>9s} {row[4]:>8s} {row[5]:>8s}")


if __name__ == "__main__":
    main()
