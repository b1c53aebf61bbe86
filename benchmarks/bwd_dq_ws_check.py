"""The Gluon dQ/dR backward (flash_mhf_bwd_dq_ws) on an H100/H200: correctness, then speed.

    python3 benchmarks/bwd_dq_ws_check.py [--budget 300] [--shapes 1.3B,370M,...]
        [--verify-configs 'default,joint']

1. verify: dq and dr against float64 (relative Frobenius error, the bar of
   mhfgen.tolerances) in bf16 and fp16 on the shapes of bwd_dkv_ws_check.py (the 1.3B
   slice, L = 1, L = 37 with Hkv < H, E = 1 at D = 64, Hkv < H at D = 64), six configs
   (three with joint scores, two that issue the next tile's scores early).
2. speed at 16384 tokens in bf16: a config sweep beside the Triton-language dQ/dR kernel
   and the Gluon dK/dU/dV kernel (its stored winner), the backward and the forward as
   dispatched, in one process.
   TFLOP/s of the dQ/dR kernel count its 5 executed GEMM units (10 T H I D); 'split' adds
   the dispatched dK/dU/dV kernel and counts the backward as 12 T H I D, forward +
   backward as 18 T H I D. Each timed config's gradients are checked against float64 first.
Exits 1 when a verify row fails, 2 on a hang.
"""

from __future__ import annotations

import argparse

import torch
import triton
from bwd_dkv_ws_check import SPEED_SHAPES, VERIFY_CASES
from hangs import attempt, finish, run_watched  # benchmarks/hangs.py, beside this script

from mhfgen import kernels
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.variants.flash_mhf_bwd_dkv_ws import flash_mhf_bwd_dkv_ws
from mhfgen.variants.flash_mhf_bwd_dq import flash_mhf_bwd_dq
from mhfgen.variants.flash_mhf_bwd_dq_ws import BwdDqWsConfig, flash_mhf_bwd_dq_ws
from mhfgen.verification import Case, make_inputs, reference_outputs

GRADS = ("dq", "dr")
VERIFY_CONFIGS = {
    "default": None,
    "s2 exp regs 40/232": BwdDqWsConfig(
        stages=2, sigmoid="exp", producer_regs=40, consumer_regs=232
    ),
    "joint": BwdDqWsConfig(joint_scores=True),
    "s2 exp joint": BwdDqWsConfig(stages=2, sigmoid="exp", joint_scores=True),
    "joint early": BwdDqWsConfig(joint_scores=True, early_scores=True),
    "s2 exp early": BwdDqWsConfig(stages=2, sigmoid="exp", early_scores=True),
}


def errors(out, ref) -> float:
    return max(relative_error(o, ref[g]) for g, o in zip(GRADS, out))


def verify(rows, names=tuple(VERIFY_CONFIGS)) -> bool:
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        bar = tolerance(dtype, grad=True)
        for case in VERIFY_CASES:
            inputs = make_inputs(case, dtype, "cuda", seed=1)
            ref = reference_outputs(*inputs)
            for name in names:
                config = VERIFY_CONFIGS[name]

                def check(config=config):
                    err = errors(finish(lambda: flash_mhf_bwd_dq_ws(*inputs, config=config)), ref)
                    return f"{err:.2e}", "ok" if err <= bar else "FAIL"

                attempt(rows, "verify", f"{str(dtype)[6:]} {case.name} {name}", check)
                ok = ok and rows[-1][-1] == "ok"
    return ok


def sweep_configs(name):
    if name == "H16D64":
        return (
            [BwdDqWsConfig(stages=s) for s in (3, 4, 6)]
            + [BwdDqWsConfig(sigmoid="exp")]
            + [BwdDqWsConfig(stages=s, joint_scores=True) for s in (4, 6)]
            + [
                BwdDqWsConfig(stages=6, producer_regs=40, consumer_regs=232, **e)
                for e in ({}, {"early_scores": True})
            ]
        )
    out = [BwdDqWsConfig(), BwdDqWsConfig(stages=2), BwdDqWsConfig(joint_scores=True)]
    if name == "1.3B":
        out += [BwdDqWsConfig(sigmoid="exp"), BwdDqWsConfig(producer_regs=40, consumer_regs=232)]
    # the next tile's scores issued before dq's MMAs are waited for, beside the same config
    # without (and, at D = 64, the stored winner's ring depth and register split)
    out += [BwdDqWsConfig(joint_scores=True, early_scores=True)]
    out += [
        BwdDqWsConfig(joint_scores=True, producer_regs=40, consumer_regs=232, **e)
        for e in ({}, {"early_scores": True})
    ]
    return out


def speed(rows, shapes):
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=40)  # noqa: E731
    for name in shapes:
        H, Hkv, D, E, De = SPEED_SHAPES[name]
        case = Case(name, 8, 2048, H, Hkv, D, E, De)
        inputs = make_inputs(case, torch.bfloat16, "cuda")
        unit = 2 * case.tokens * H * E * De * D  # one GEMM unit
        ref = reference_outputs(*inputs)
        bar = tolerance(torch.bfloat16, grad=True)
        t_fwd = bench(lambda: kernels.forward(*inputs[:5]))
        t_dq = bench(lambda: flash_mhf_bwd_dq(*inputs))
        t_dkv = bench(lambda: flash_mhf_bwd_dkv_ws(*inputs))  # its stored winner
        t_bwd = bench(lambda: kernels.backward(*inputs))
        attempt(
            rows,
            "speed",
            f"{name} forward (dispatched)",
            lambda: (f"{t_fwd:.3f} ms", f"{3 * unit / t_fwd / 1e9:.0f} TFLOP/s"),
        )
        attempt(
            rows,
            "speed",
            f"{name} dq (Triton, dispatched)",
            lambda: (f"{t_dq:.3f} ms", f"executed {5 * unit / t_dq / 1e9:.0f}"),
        )
        attempt(
            rows,
            "speed",
            f"{name} dkv (Gluon, stored winner)",
            lambda: (f"{t_dkv:.3f} ms", f"executed {6 * unit / t_dkv / 1e9:.0f}"),
        )
        attempt(
            rows,
            "speed",
            f"{name} backward (dispatched)",
            lambda: (
                f"{t_bwd:.3f} ms",
                f"bwd {6 * unit / t_bwd / 1e9:.0f} fwd+bwd {9 * unit / (t_fwd + t_bwd) / 1e9:.0f}",
            ),
        )
        for config in sweep_configs(name):

            def timed(config=config):
                err = errors(finish(lambda: flash_mhf_bwd_dq_ws(*inputs, config=config)), ref)
                if err > bar:
                    return "-", f"WRONG {err:.2e}"
                t = bench(lambda: flash_mhf_bwd_dq_ws(*inputs, config=config))
                split = t + t_dkv
                return f"{t:.3f} ms", (
                    f"executed {5 * unit / t / 1e9:.0f}; split {split:.3f} ms: "
                    f"bwd {6 * unit / split / 1e9:.0f} fwd+bwd "
                    f"{9 * unit / (t_fwd + split) / 1e9:.0f}; err {err:.2e}"
                )

            attempt(rows, "speed", f"{name} dq_ws {config.describe()}", timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300, help="seconds before the watchdog")
    parser.add_argument(
        "--shapes", default="1.3B,370M,H16D64,1.3B-gqa4", help="speed shapes ('' for none)"
    )
    parser.add_argument(
        "--verify-configs",
        default=",".join(VERIFY_CONFIGS),
        help="names of the configs to verify (default: all)",
    )
    args = parser.parse_args()
    names = [n for n in args.verify_configs.split(",") if n]
    unknown = [n for n in names if n not in VERIFY_CONFIGS]
    if unknown:
        parser.error(f"unknown verify configs {unknown}; known: {list(VERIFY_CONFIGS)}")

    def steps(rows):
        good = verify(rows, names)
        if good:
            speed(rows, [s for s in args.shapes.split(",") if s])
        return good

    raise SystemExit(0 if run_watched(steps, args.budget) else 1)


if __name__ == "__main__":
    main()
