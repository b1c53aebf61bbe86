"""Time the generated kernels on a GPU for a few shapes and a grid of launch configs.

A kernel engineer's probe, not the tuner: prints TFLOP/s of the forward (6 T H I D FLOPs),
the backward (12 T H I D, counted as in docs/CONTRACTS.md) and forward + backward (18 T H I D) for
the heuristic config and the best of a small grid per kernel.

    python benchmarks/kernel_sweep.py --shapes 1.3B,370M --tokens 16384 --grid
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch
import triton

from mhfgen import device as _device
from mhfgen import registry
from mhfgen.kernels.configs import spec_of
from mhfgen.presets import PRESETS, Preset
from mhfgen.registry import default_config
from mhfgen.validation import check_flash_mhf_inputs
from mhfgen.variants.flash_mhf_bwd_dkv import flash_mhf_bwd_dkv
from mhfgen.variants.flash_mhf_bwd_dq import flash_mhf_bwd_dq
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
from mhfgen.verification import Case, make_inputs

EXTRA = {"H16D64": Preset("H16D64", 1024, 16, 64, 2816, 11)}
LAUNCH = {
    "flash_mhf_fwd": lambda i, c: flash_mhf_fwd(*i[:5], config=c),
    "flash_mhf_bwd_dq": lambda i, c: flash_mhf_bwd_dq(*i, c),
    "flash_mhf_bwd_dkv": lambda i, c: flash_mhf_bwd_dkv(*i, c),
}
FLOP_FACTOR = {"flash_mhf_fwd": 6, "flash_mhf_bwd_dq": 10, "flash_mhf_bwd_dkv": 12}


FOCUSED = {
    "flash_mhf_fwd": [
        (128, 64, 8, 3),
        (128, 64, 8, 2),
        (64, 32, 4, 2),
        (64, 64, 4, 3),
        (128, 32, 8, 3),
        (128, 128, 8, 2),
        (64, 128, 4, 2),
    ],
    "flash_mhf_bwd_dq": [
        (128, 64, 8, 3),
        (128, 64, 8, 2),
        (64, 32, 4, 3),
        (128, 32, 8, 3),
        (64, 64, 4, 2),
    ],
    "flash_mhf_bwd_dkv": [
        (64, 32, 4, 3),
        (64, 64, 8, 2),
        (64, 64, 8, 3),
        (128, 64, 8, 2),
        (128, 32, 8, 2),
        (64, 128, 8, 2),
        (128, 32, 4, 2),
        (64, 64, 4, 2),
    ],
}


def grid(kernel: str, base, focused: bool = False, knob: str | None = None) -> list:
    """A full grid of tile sizes, warps and stages, or a focused list with a boolean knob
    both ways (default per kernel: prefetch_scores, tma, transpose_acc)."""
    if focused:
        space = FOCUSED[kernel]
    elif kernel == "flash_mhf_fwd":
        space = itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
    elif kernel == "flash_mhf_bwd_dq":
        space = itertools.product((64, 128), (32, 64), (4, 8), (1, 2, 3))
    else:
        space = itertools.product((32, 64, 128), (32, 64), (4, 8), (1, 2, 3))
    # the structural knob of each kernel, both ways in a focused sweep
    knob = (
        knob
        or {
            "flash_mhf_fwd": "prefetch_scores",
            "flash_mhf_bwd_dq": "tma",
            "flash_mhf_bwd_dkv": "transpose_acc",
        }[kernel]
    )
    values = (False, True) if focused else (False,)
    extra = {"tma": True} if knob == "warp_specialize" else {}  # WS needs descriptor loads
    # the default's split knobs, where the variant has them
    kept = {
        name: getattr(base, name)
        for name in ("group_heads", "token_splits", "inter_splits")
        if hasattr(base, name)
    }
    return [
        registry.get(kernel).Config(
            block_m=bm, block_n=bn, num_warps=w, num_stages=s, **kept, **extra, **{knob: value}
        )
        for (bm, bn, w, s) in space
        for value in values
    ]


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default="1.3B,370M,H16D64")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--grid", action="store_true", help="also sweep a grid of configs")
    ap.add_argument(
        "--focused", action="store_true", help="a focused list instead of the full grid"
    )
    ap.add_argument("--grid-shapes", default="1.3B", help="shapes that get the grid")
    ap.add_argument("--kernels", default=",".join(LAUNCH), help="kernels to time")
    ap.add_argument(
        "--knob",
        default=None,
        help="the boolean config field a focused sweep varies "
        "(e.g. warp_specialize; default per kernel)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    presets = {**PRESETS, **EXTRA}
    results = []
    print(
        f"# {_device.gpu_name(dev)}, torch {torch.__version__}, triton {triton.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    for name in args.shapes.split(","):
        p = presets[name]
        B = max(1, args.tokens // 2048)
        case = Case(
            name, B, args.tokens // B, p.heads, p.heads, p.head_dim, p.experts, p.expert_dim
        )
        inputs = make_inputs(case, torch.bfloat16, dev)
        problem = check_flash_mhf_inputs(*inputs[:5])
        spec = spec_of(problem, inputs[0])
        unit = problem.tokens * p.heads * p.intermediate * p.head_dim
        best_ms = {}
        for kernel, launch in LAUNCH.items():
            if kernel not in args.kernels.split(","):
                continue
            base = default_config(kernel, spec, problem.tokens, _device.sm_count(dev))
            configs = [base] + (
                grid(kernel, base, args.focused, args.knob)
                if args.grid and name in args.grid_shapes
                else []
            )
            timings = []
            for config in configs:
                try:
                    ms = bench(lambda: launch(inputs, config))
                except Exception as exc:  # noqa: BLE001 - a probe: report and go on
                    print(
                        f"  {name} {kernel} {config}: failed {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100]}",
                        file=sys.stderr,
                    )
                    continue
                timings.append((ms, config))
                results.append(
                    {
                        "shape": name,
                        "kernel": kernel,
                        "config": config.as_dict(),
                        "ms": ms,
                        "tflops": FLOP_FACTOR[kernel] * unit / ms / 1e9,
                    }
                )
            timings.sort(key=lambda t: t[0])
            base_ms = (
                next(ms for ms, c in timings if c == base)
                if any(c == base for _, c in timings)
                else float("nan")
            )
            best, best_cfg = timings[0]
            best_ms[kernel] = (base_ms, best)
            print(
                f"{name:<7} {kernel:<18} default {base_ms:7.3f} ms "
                f"{FLOP_FACTOR[kernel] * unit / base_ms / 1e9:6.1f} TF/s | best {best:7.3f} ms "
                f"{FLOP_FACTOR[kernel] * unit / best / 1e9:6.1f} TF/s "
                f"bm{best_cfg.block_m} bn{best_cfg.block_n} w{best_cfg.num_warps} s{best_cfg.num_stages}"
                f"{' tma' if best_cfg.tma else ''}{' T' if best_cfg.transpose_acc else ''}"
                f"{' prefetch' if best_cfg.prefetch_scores else ''}"
                f"{' ws' if best_cfg.warp_specialize else ''}"
                f" (of {len(timings)})"
            )
        for label, idx in (("default", 0), ("best", 1)) if len(best_ms) == len(LAUNCH) else ():
            f = best_ms["flash_mhf_fwd"][idx]
            b = best_ms["flash_mhf_bwd_dq"][idx] + best_ms["flash_mhf_bwd_dkv"][idx]
            print(
                f"{name:<7} {label:<8} fwd {6 * unit / f / 1e9:6.1f} TF/s  bwd {12 * unit / b / 1e9:6.1f}"
                f"  fwd+bwd {18 * unit / (f + b) / 1e9:6.1f} TF/s"
            )
        inputs = None  # free the GPU memory before the next shape
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
