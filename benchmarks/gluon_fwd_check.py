"""The Gluon forward (flash_mhf_fwd_ws) on an H100/H200: correctness, then speed, one run.

    python3 benchmarks/gluon_fwd_check.py [--quick] [--only SUBSTR ...]
        [--shapes 1.3B,370M] [--configs 'BN64 s4 2x4w regs 24/240 joint,...']

1. verify: flash_mhf_fwd_ws against the float64 reference (relative Frobenius error, the
   bar of mhfgen.tolerances) in bf16 and fp16 on odd shapes (L = 1, L = 37, D = 96 with
   De = 80, E = 1, Hkv < H, strided q) for every schedule family (1 x 8-warp consumer,
   2 x 4-warp consumers, ping-pong, kv-group sharing, exp sigmoid, 3 stages, joint
   score MMAs with five of them, and three 4-warp consumers where their registers fit).
2. speed: TFLOP/s (6 * tokens * H * I * D over the median of do_bench) at 16384 tokens in
   bf16 on the 1.3B, 370M, (H16, D64) and 128M (D = 96) shapes over a sweep of configs
   (the whole sweep on 1.3B, the --quick one on the others; or the configs --configs
   names by their describe() strings, on every shape they fit),
   beside mhfgen's Triton-language forward (as dispatched) and a SwiGLU FFN of equal FLOPs
   (cuBLAS), in the same process.
Every first launch is watched for a hang (mbarrier deadlock): a hang ends the run, printing
what was measured. The tables are printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback

import torch
import torch.nn.functional as F
from hangs import Hang, finish, run_watched  # benchmarks/hangs.py, beside this script

from mhfgen import reference
from mhfgen.spec import KernelSpec
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
from mhfgen.variants.flash_mhf_fwd_ws import WsConfig, config_problems, flash_mhf_fwd_ws
from mhfgen.verification import Case, make_inputs

C1 = WsConfig(consumers=1, consumer_warps=8)  # 1 consumer of 8 warps
C2 = WsConfig(consumers=2, consumer_warps=4)
PP = WsConfig(consumers=2, consumer_warps=4, pingpong=True)
GQA = WsConfig(consumers=2, consumer_warps=4, group_heads=2)
EXP = WsConfig(consumers=1, consumer_warps=8, sigmoid="exp")
S3 = WsConfig(consumers=1, consumer_warps=8, stages=3)
VERIFY_CONFIGS = {
    "1x8w": C1,
    "2x4w": C2,
    "pingpong": PP,
    "gqa2": GQA,
    "exp": EXP,
    "s3": S3,
    "2x4w-joint": WsConfig(consumers=2, consumer_warps=4, joint_scores=True),
    "pingpong-joint": WsConfig(consumers=2, consumer_warps=4, pingpong=True, joint_scores=True),
    "gqa2-exp-joint": WsConfig(
        consumers=2, consumer_warps=4, group_heads=2, sigmoid="exp", joint_scores=True
    ),
    "1x8w-joint": WsConfig(consumers=1, consumer_warps=8, joint_scores=True),
    "bn32-s6-persistent-joint": WsConfig(
        block_n=32, stages=6, consumers=2, consumer_warps=4, persistent=True, joint_scores=True
    ),
    # which of 32-column tiles, 6 slots, persistence and joint scores gives
    # bn32-s6-persistent-joint its wrong 1.3B-slice outputs
    "bn32-s6-persistent": WsConfig(block_n=32, stages=6, persistent=True),
    "bn32-s6": WsConfig(block_n=32, stages=6),
    "bn32-s6-joint": WsConfig(block_n=32, stages=6, joint_scores=True),
    "bn32-s4-joint": WsConfig(block_n=32, stages=4, joint_scores=True),
    "bn32-s4": WsConfig(block_n=32, stages=4),
    "persistent-joint": WsConfig(persistent=True, joint_scores=True),
    # three consumers (D <= 96 only: config_problems refuses them at D = 128)
    "3x4w-bn32": WsConfig(block_n=32, consumers=3, consumer_regs=160),
    "3x4w-bn32-joint-2tile": WsConfig(
        block_n=32, consumers=3, consumer_regs=160, joint_scores=True, unroll_tiles=2
    ),
    "3x4w-bn32-exp": WsConfig(block_n=32, consumers=3, consumer_regs=160, sigmoid="exp"),
}

VERIFY_CASES = [
    Case("1.3B-slice", 2, 300, 16, 16, 128, 22, 256),
    Case("L=1", 1, 1, 8, 8, 128, 11, 256),
    Case("L=37,Hkv<H", 1, 37, 8, 2, 128, 4, 128),
    Case("D=96,De=80", 2, 150, 8, 8, 96, 8, 80),
    Case("E=1", 1, 200, 4, 4, 64, 1, 512),
    Case("Hkv<H,D64", 3, 100, 16, 4, 64, 11, 256),
]

SHAPES = {  # name: (H, Hkv, D, E, De)
    "1.3B": (16, 16, 128, 22, 256),
    "370M": (8, 8, 128, 11, 256),
    "H16-D64": (16, 16, 64, 11, 256),
    "128M-D96": (8, 8, 96, 8, 256),
}


def sweep_configs(quick: bool) -> dict[str, WsConfig]:
    out = {}
    for stages in (3, 4, 6):  # three consumers: 32-column tiles, 160 registers each
        for unroll in (1, 2):
            for joint in (False, True):
                out[f"3x4w-bn32-s{stages}{'-joint' if joint else ''}-u{unroll}"] = WsConfig(
                    block_n=32,
                    stages=stages,
                    consumers=3,
                    consumer_regs=160,
                    joint_scores=joint,
                    unroll_tiles=unroll,
                )
    for joint in (False, True):  # beside them: two consumers, two tiles an iteration
        out[f"2x4w-bn64-s4{'-joint' if joint else ''}-u2"] = WsConfig(
            joint_scores=joint, unroll_tiles=2
        )
    for consumers, warps in ((1, 8), (2, 4)):
        for block_n in (64, 32, 128):
            for stages in (3, 4, 5, 6):
                for pingpong in (False, True) if consumers == 2 else (False,):
                    for sigmoid in ("tanh", "exp"):
                        if quick and (stages > 4 or sigmoid == "exp" or block_n == 32):
                            continue
                        for joint in (False, True):
                            c = WsConfig(
                                block_n=block_n,
                                stages=stages,
                                consumers=consumers,
                                consumer_warps=warps,
                                pingpong=pingpong,
                                sigmoid=sigmoid,
                                joint_scores=joint,
                            )
                            name = (
                                f"{consumers}x{warps}w-bn{block_n}-s{stages}"
                                f"{'-pp' if pingpong else ''}-{sigmoid}"
                                f"{'-joint' if joint else ''}"
                            )
                            out[name] = c
    return out


def named_configs(wanted) -> dict[str, WsConfig]:
    """The configs whose describe() is in `wanted`, from the whole sweep and its
    persistent twins."""
    every = list(sweep_configs(False).values())
    every += [dataclasses.replace(c, persistent=True) for c in every]
    known = {c.describe(): c for c in every}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise SystemExit(f"unknown configs {missing}")
    return {w: known[w] for w in wanted}


def spec_of(H, Hkv, D, E, De, dtype):
    return KernelSpec(H, Hkv, D, E, De, dtype, "sm90")


def verify(rows, only):
    for dtype in (torch.bfloat16, torch.float16):
        dname = str(dtype).removeprefix("torch.")
        for case in VERIFY_CASES:
            q, k, u, v, r, _ = make_inputs(case, dtype, "cuda", seed=1)
            if case.name.startswith("E=1"):  # also a strided q (head stride D + 8)
                q, k, u, v, r, _ = make_inputs(case, dtype, "cuda", seed=1, q_layout="strided")
            ref = reference.flash_mhf(q.double(), k.double(), u.double(), v.double(), r.double())
            spec = spec_of(
                case.heads, case.kv_heads, case.head_dim, case.experts, case.expert_dim, dname
            )
            for cname, config in VERIFY_CONFIGS.items():
                if only and not any(o in cname for o in only):
                    continue
                if config_problems(spec, config):
                    rows.append(("verify", dname, case.name, cname, "n/a", "", ""))
                    continue
                try:
                    o = finish(lambda: flash_mhf_fwd_ws(q, k, u, v, r, config))
                    err = relative_error(o, ref)
                    ok = err <= tolerance(dname)
                    rows.append(
                        (
                            "verify",
                            dname,
                            case.name,
                            cname,
                            "ok" if ok else "WRONG",
                            f"{err:.2e}",
                            "",
                        )
                    )
                except Hang:
                    rows.append(("verify", dname, case.name, cname, "HANG", "", ""))
                    raise
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    rows.append(
                        (
                            "verify",
                            dname,
                            case.name,
                            cname,
                            f"error {type(exc).__name__}",
                            str(exc)[:60],
                            "",
                        )
                    )
            print(f"verified {dname} {case.name}", flush=True)


def bench_ms(fn):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=150, return_mode="median")


def speed(rows, quick, only, tokens=16384, shapes=tuple(SHAPES), wanted=()):
    for sname in shapes:
        H, Hkv, D, E, De = SHAPES[sname]
        # the whole sweep on 1.3B only
        configs = named_configs(wanted) if wanted else sweep_configs(quick or sname != "1.3B")
        case = Case(sname, tokens // 2048, 2048, H, Hkv, D, E, De)
        q, k, u, v, r, _ = make_inputs(case, torch.bfloat16, "cuda", seed=2)
        flops = 6.0 * tokens * H * E * De * D
        ref_o = flash_mhf_fwd(q, k, u, v, r)
        ms = bench_ms(lambda: flash_mhf_fwd(q, k, u, v, r))
        rows.append(
            (
                "speed",
                "bfloat16",
                sname,
                "triton flash_mhf_fwd",
                "ok",
                f"{ms:.3f}",
                f"{flops / ms * 1e-9:.1f}",
            )
        )
        d, inter = H * D, E * De
        x = torch.randn(tokens, d, device="cuda", dtype=torch.bfloat16)
        w1, w3 = (
            torch.randn(inter, d, device="cuda", dtype=torch.bfloat16) * d**-0.5 for _ in range(2)
        )
        w2 = torch.randn(d, inter, device="cuda", dtype=torch.bfloat16) * inter**-0.5
        ms = bench_ms(lambda: F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2))
        rows.append(
            (
                "speed",
                "bfloat16",
                sname,
                "SwiGLU (cuBLAS)",
                "ok",
                f"{ms:.3f}",
                f"{flops / ms * 1e-9:.1f}",
            )
        )
        x = w1 = w2 = w3 = None  # free the GPU memory before the next shape
        spec = spec_of(H, Hkv, D, E, De, "bfloat16")
        print(f"{sname}: baselines done", flush=True)
        for cname, config in configs.items():
            if only and not wanted and not any(o in cname for o in only):
                continue
            if config_problems(spec, config):
                continue
            try:
                o = finish(lambda: flash_mhf_fwd_ws(q, k, u, v, r, config))
                agree = relative_error(o, ref_o)
                ms = bench_ms(lambda: flash_mhf_fwd_ws(q, k, u, v, r, config))
                rows.append(
                    (
                        "speed",
                        "bfloat16",
                        sname,
                        cname,
                        "ok" if agree < 5e-3 else f"DIFF {agree:.1e}",
                        f"{ms:.3f}",
                        f"{flops / ms * 1e-9:.1f}",
                    )
                )
            except Hang:
                rows.append(("speed", "bfloat16", sname, cname, "HANG", "", ""))
                raise
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                rows.append(
                    (
                        "speed",
                        "bfloat16",
                        sname,
                        cname,
                        f"error {type(exc).__name__}",
                        str(exc)[:60],
                        "",
                    )
                )
        print(f"{sname}: sweep done", flush=True)
        q = k = u = v = r = ref_o = None
        torch.cuda.empty_cache()


def print_rows(rows, t0):
    print()
    print(
        f"{'part':7s} {'dtype':9s} {'shape':14s} {'config':28s} {'status':12s} "
        f"{'err/ms':>10s} {'TFLOP/s':>8s}"
    )
    for row in rows:
        print(
            f"{row[0]:7s} {row[1]:9s} {row[2]:14s} {row[3]:28s} {row[4]:12s} {row[5]:>10s} "
            f"{row[6]:>8s}"
        )
    print(f"wall {time.time() - t0:.0f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller config sweep")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--budget", type=float, default=420, help="seconds before the watchdog")
    parser.add_argument("--only", nargs="*", default=[], help="config name substrings")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="speed shapes")
    parser.add_argument(
        "--configs",
        default="",
        help="describe() strings of the configs to time (default: the sweep)",
    )
    args = parser.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    wanted = [c for c in args.configs.split(",") if c]
    named_configs(wanted)  # unknown names fail before the GPU work

    def steps(rows):
        if not args.skip_verify:
            verify(rows, args.only)
        speed(rows, args.quick, args.only, shapes=shapes, wanted=wanted)

    run_watched(steps, args.budget, report=print_rows)


if __name__ == "__main__":
    main()
