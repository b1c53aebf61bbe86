"""The Gluon dK/dU/dV backwards (flash_mhf_bwd_dkv_ws, flash_mhf_bwd_dkvt_ws) on an H100/H200:
correctness, then speed.

    python3 benchmarks/bwd_dkv_ws_check.py [--budget 500] [--shapes 1.3B,370M,...]
        [--verify-configs 'default,rows s4'] [--configs 's3 regs 24/240 rows,...'] [--triton]

1. verify: dk, du, dv against float64 (relative Frobenius error, the bar of
   mhfgen.tolerances) in bf16 and fp16 on the 1.3B shape's slice, L = 1, L = 37 with
   Hkv < H, E = 1 at D = 64 and Hkv < H at D = 64, for a few configs of both splits
   (token splits, exp sigmoid, other register budgets, deeper rings, joint scores and
   joint transposed gradients; and the row-owning flash_mhf_bwd_dkvt_ws, whose config
   names start 'dkvt'; 'n/a' where a config does not fit the shape).
2. speed at 16384 tokens in bf16: a config sweep (or the configs named by --configs, as
   'dkv_ws DESCRIBE' or 'dkvt DESCRIBE', DESCRIBE the config's describe(); a bare DESCRIBE
   names a flash_mhf_bwd_dkv_ws config; any config can be named so) beside the dispatched
   forward, backward and dQ/dR (and, with --triton, the Triton-language dK/dU/dV), in one
   process. TFLOP/s of the dK/dU/dV kernel count its 6 executed GEMM units (12 T H I D);
   'split' adds the dispatched dQ/dR and counts the backward as 12 T H I D, forward +
   backward as 18 T H I D. Each timed config's gradients are checked against float64 first.
Every first launch is watched for a hang (an mbarrier deadlock): a hang ends the run,
printing what was measured.
"""

from __future__ import annotations

import argparse

import torch
import triton
from hangs import attempt, finish, row, run_watched  # benchmarks/hangs.py, beside this script

from mhfgen import kernels
from mhfgen.spec import KernelSpec
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.variants import flash_mhf_bwd_dkv_ws as ws
from mhfgen.variants import flash_mhf_bwd_dkvt_ws as wst
from mhfgen.variants.flash_mhf_bwd_dkv import flash_mhf_bwd_dkv
from mhfgen.variants.flash_mhf_bwd_dkv_ws import BwdDkvWsConfig
from mhfgen.variants.flash_mhf_bwd_dkvt_ws import BwdDkvtWsConfig
from mhfgen.verification import Case, make_inputs, reference_outputs

GRADS = ("dk", "du", "dv")
VERIFY_CASES = [
    Case("1.3B-slice", 2, 300, 16, 16, 128, 22, 256),
    Case("L=1", 1, 1, 8, 8, 128, 11, 256),
    Case("L=37,Hkv<H", 1, 37, 8, 2, 128, 4, 128),
    Case("E=1,D64", 1, 200, 4, 4, 64, 1, 512),
    Case("Hkv<H,D64", 3, 100, 16, 4, 64, 11, 256),
]
VERIFY_CONFIGS = {
    "default": BwdDkvWsConfig(),
    "ts2 exp": BwdDkvWsConfig(token_splits=2, sigmoid="exp"),
    "regs 40/232": BwdDkvWsConfig(producer_regs=40, consumer_regs=232),
    "rows s4": BwdDkvWsConfig(split="rows", stages=4),
    "rows s2 ts2 exp": BwdDkvWsConfig(split="rows", token_splits=2, sigmoid="exp"),
    "rows s3 joint": BwdDkvWsConfig(split="rows", stages=3, joint_scores=True),
    "s3 joint": BwdDkvWsConfig(stages=3, joint_scores=True),
    "rows s2 ts2 exp joint": BwdDkvWsConfig(
        split="rows", token_splits=2, sigmoid="exp", joint_scores=True
    ),
    "rows s3 joint jgrads": BwdDkvWsConfig(
        split="rows", stages=3, joint_scores=True, joint_grads=True
    ),
    "rows s3 jgrads": BwdDkvWsConfig(split="rows", stages=3, joint_grads=True),
    "rows s2 ts2 exp joint jgrads": BwdDkvWsConfig(
        split="rows", token_splits=2, sigmoid="exp", joint_scores=True, joint_grads=True
    ),
    "dkvt s4 wg32": BwdDkvtWsConfig(stages=4),
    "dkvt s3 wg64": BwdDkvtWsConfig(stages=3, wg_rows=64),
    "dkvt s2 ts2 exp wg32": BwdDkvtWsConfig(stages=2, token_splits=2, sigmoid="exp"),
    "dkvt s6 regs 40/232 wg32": BwdDkvtWsConfig(stages=6, producer_regs=40, consumer_regs=232),
}
SPEED_SHAPES = {
    "1.3B": (16, 16, 128, 22, 256),
    "370M": (8, 8, 128, 11, 256),
    "H16D64": (16, 16, 64, 11, 256),
    "1.3B-gqa4": (16, 4, 128, 22, 256),
    "128M": (8, 8, 96, 8, 256),
}


def spec_of(case, dtype) -> KernelSpec:
    return KernelSpec(
        case.heads,
        case.kv_heads,
        case.head_dim,
        case.experts,
        case.expert_dim,
        str(dtype).removeprefix("torch."),
        "sm90",
    )


def module_of(config):
    """The kernel module of a config: flash_mhf_bwd_dkv_ws or flash_mhf_bwd_dkvt_ws."""
    return wst if isinstance(config, BwdDkvtWsConfig) else ws


def config_problems(spec, config) -> list[str]:
    return module_of(config).config_problems(spec, config)


def launch(inputs, config):
    """dk, du, dv of `inputs` through the kernel of `config`."""
    m = module_of(config)
    return getattr(m, m.KERNEL)(*inputs, config=config)


def label(config) -> str:
    return f"{'dkvt' if module_of(config) is wst else 'dkv_ws'} {config.describe()}"


def errors(out, ref) -> float:
    return max(relative_error(o, ref[g]) for g, o in zip(GRADS, out))


def verify(rows, names):
    for dtype in (torch.bfloat16, torch.float16):
        bar = tolerance(dtype, grad=True)
        for case in VERIFY_CASES:
            inputs = make_inputs(case, dtype, "cuda", seed=1)
            ref = reference_outputs(*inputs)
            spec = spec_of(case, dtype)
            for name in names:
                config = VERIFY_CONFIGS[name]
                if config_problems(spec, config):  # e.g. joint_grads at D = 64
                    row(rows, "verify", f"{str(dtype)[6:]} {case.name} {name}", "-", "n/a")
                    continue

                def check(config=config):
                    err = errors(finish(lambda: launch(inputs, config)), ref)
                    return f"{err:.2e}", "ok" if err <= bar else "FAIL"

                attempt(rows, "verify", f"{str(dtype)[6:]} {case.name} {name}", check)


def sweep_configs(name):
    out = [BwdDkvWsConfig()]
    by_rows = lambda **kw: BwdDkvWsConfig(split="rows", **kw)  # noqa: E731
    if name == "H16D64":
        out += [by_rows(stages=s) for s in (3, 4, 6, 8)]
    else:
        out += [by_rows(stages=s) for s in (2, 3, 4)]
    if name == "1.3B":
        out += [
            by_rows(stages=4, sigmoid="exp"),
            by_rows(stages=4, producer_regs=40, consumer_regs=232),
            by_rows(stages=4, token_splits=2),
        ]
    if name in ("1.3B", "H16D64"):
        out += [BwdDkvWsConfig(sigmoid="exp"), BwdDkvWsConfig(producer_regs=40, consumer_regs=232)]
        out += [BwdDkvWsConfig(token_splits=2)]
    if name == "H16D64":
        out += [BwdDkvWsConfig(stages=3), BwdDkvWsConfig(stages=4)]
        out += [BwdDkvWsConfig(stages=s, joint_scores=True) for s in (3, 4)]
    else:
        out += [by_rows(stages=s, joint_scores=True) for s in (3, 4)]
        out += [by_rows(stages=s, joint_scores=True, joint_grads=True) for s in (3, 4)]
    if name == "370M":
        out += [BwdDkvWsConfig(token_splits=2), BwdDkvWsConfig(sigmoid="exp")]
    if name == "H16D64":
        out += [BwdDkvtWsConfig(stages=s) for s in (2, 3, 4, 6, 8)]
        out += [BwdDkvtWsConfig(stages=s, wg_rows=64) for s in (2, 3, 4, 6, 8)]
        out += [BwdDkvtWsConfig(stages=6, wg_rows=64, token_splits=t) for t in (2, 3, 4)]
        out += [
            BwdDkvtWsConfig(stages=6, wg_rows=64, sigmoid="exp"),
            BwdDkvtWsConfig(stages=6, wg_rows=64, producer_regs=40, consumer_regs=232),
        ]
        out += [
            BwdDkvtWsConfig(stages=4, token_splits=2),
            BwdDkvtWsConfig(stages=4, sigmoid="exp"),
            BwdDkvtWsConfig(stages=4, producer_regs=40, consumer_regs=232),
        ]
    else:
        out += [BwdDkvtWsConfig(stages=s) for s in (2, 3)]
    return out


def parse_label(text):
    """The config a label() names: 'dkvt' or 'dkv_ws' (or nothing: dkv_ws), then the
    words of its describe(), e.g. 'dkvt s6 regs 24/240 wg64 ts3 exp' or
    's4 regs 24/240 rows joint jgrads'; None where a word is not one of theirs."""
    words = text.split()
    cls = BwdDkvtWsConfig if words[:1] == ["dkvt"] else BwdDkvWsConfig
    if words[:1] in (["dkvt"], ["dkv_ws"]):
        words = words[1:]
    kw, i = {}, 0
    while i < len(words):
        w = words[i]
        if w == "regs" and i + 1 < len(words) and "/" in words[i + 1]:
            producer, consumer = words[i + 1].split("/")
            kw.update(producer_regs=int(producer), consumer_regs=int(consumer))
            i += 1
        elif w[:1] == "s" and w[1:].isdigit():
            kw["stages"] = int(w[1:])
        elif w[:2] == "ts" and w[2:].isdigit():
            kw["token_splits"] = int(w[2:])
        elif cls is BwdDkvtWsConfig and w[:2] == "wg" and w[2:].isdigit():
            kw["wg_rows"] = int(w[2:])
        elif w == "exp":
            kw["sigmoid"] = "exp"
        elif cls is BwdDkvWsConfig and w in ("rows", "tokens"):
            kw["split"] = w
        elif cls is BwdDkvWsConfig and w in ("joint", "jgrads"):
            kw["joint_scores" if w == "joint" else "joint_grads"] = True
        else:
            return None
        i += 1
    try:
        return cls(**kw)
    except ValueError:
        return None


def chosen_configs(name, wanted):
    """The sweep of shape `name`, or the configs among every shape's sweep (and the verify
    configs) named in `wanted` (by label(), or a flash_mhf_bwd_dkv_ws config's describe())."""
    configs = sweep_configs(name)
    if not wanted:
        return configs
    every = [c for shape in SPEED_SHAPES for c in sweep_configs(shape)]
    known = {}
    for c in [*every, *VERIFY_CONFIGS.values()]:
        known[label(c)] = c
        if module_of(c) is ws:  # a bare describe() names a flash_mhf_bwd_dkv_ws config
            known[c.describe()] = c
    for w in wanted:
        if w not in known and parse_label(w) is not None:
            known[w] = parse_label(w)
    missing = [w for w in wanted if w not in known]
    if missing:
        raise SystemExit(f"unknown configs {missing}; known: {sorted(known)}")
    return [known[w] for w in wanted]


def speed(rows, shapes, wanted=(), triton_dkv=False):
    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=40)  # noqa: E731
    for name in shapes:
        H, Hkv, D, E, De = SPEED_SHAPES[name]
        case = Case(name, 8, 2048, H, Hkv, D, E, De)
        inputs = make_inputs(case, torch.bfloat16, "cuda")
        unit = 2 * case.tokens * H * E * De * D  # one GEMM unit
        ref = reference_outputs(*inputs)
        bar = tolerance(torch.bfloat16, grad=True)
        t_fwd = bench(lambda: kernels.forward(*inputs[:5]))
        t_bwd = bench(lambda: kernels.backward(*inputs))
        t_dq = bench(lambda: kernels.backward_dq(*inputs))
        row(
            rows,
            "speed",
            f"{name} forward (dispatched)",
            f"{t_fwd:.3f} ms",
            f"{3 * unit / t_fwd / 1e9:.0f} TFLOP/s",
        )
        row(
            rows,
            "speed",
            f"{name} backward (dispatched)",
            f"{t_bwd:.3f} ms",
            f"bwd {6 * unit / t_bwd / 1e9:.0f} fwd+bwd {9 * unit / (t_fwd + t_bwd) / 1e9:.0f}",
        )
        row(
            rows,
            "speed",
            f"{name} dq (dispatched)",
            f"{t_dq:.3f} ms",
            f"executed {5 * unit / t_dq / 1e9:.0f}",
        )
        if triton_dkv:
            t_dkv = bench(lambda: flash_mhf_bwd_dkv(*inputs))
            row(
                rows,
                "speed",
                f"{name} dkv (Triton)",
                f"{t_dkv:.3f} ms",
                f"executed {6 * unit / t_dkv / 1e9:.0f}",
            )
        for config in chosen_configs(name, wanted):
            if config_problems(spec_of(case, torch.bfloat16), config):
                continue

            def timed(config=config):
                err = errors(finish(lambda: launch(inputs, config)), ref)
                if err > bar:
                    return "-", f"WRONG {err:.2e}"
                t = bench(lambda: launch(inputs, config))
                split = t_dq + t
                return f"{t:.3f} ms", (
                    f"executed {6 * unit / t / 1e9:.0f}; split {split:.3f} ms: "
                    f"bwd {6 * unit / split / 1e9:.0f} fwd+bwd "
                    f"{9 * unit / (t_fwd + split) / 1e9:.0f}; err {err:.2e}"
                )

            attempt(rows, "speed", f"{name} {label(config)}", timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=500, help="seconds before the watchdog")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument(
        "--shapes", default="1.3B,370M,H16D64,1.3B-gqa4", help="speed shapes ('' for none)"
    )
    parser.add_argument(
        "--verify-configs",
        default=",".join(VERIFY_CONFIGS),
        help="names of the configs to verify (default: all)",
    )
    parser.add_argument(
        "--configs",
        default="",
        help="the configs to time, as 'dkv_ws DESCRIBE' or 'dkvt DESCRIBE' (default: the sweep)",
    )
    parser.add_argument(
        "--triton", action="store_true", help="also time the Triton-language dK/dU/dV kernel"
    )
    args = parser.parse_args()
    names = [n for n in args.verify_configs.split(",") if n]
    unknown = [n for n in names if n not in VERIFY_CONFIGS]
    if unknown:
        parser.error(f"unknown verify configs {unknown}; known: {list(VERIFY_CONFIGS)}")
    wanted = [c for c in args.configs.split(",") if c]

    def steps(rows):
        if not args.skip_verify:
            verify(rows, names)
        speed(rows, [s for s in args.shapes.split(",") if s], wanted, args.triton)

    run_watched(steps, args.budget)


if __name__ == "__main__":
    main()
