"""The one-pass backward (flash_mhf_bwd_fused) on an H100/H200: correctness, then speed.

    python3 benchmarks/bwd_fused_sweep.py [--quick] [--jobs 14]

1. verify: every gradient of flash_mhf_bwd_fused against the float64 reference (relative
   Frobenius error, the bar of mhfgen.tolerances) in bf16 and fp16 on odd shapes (L = 1,
   L = 37 with Hkv < H, D = 96 with De = 80, E = 1, D = 64 with Hkv < H), with TMA and
   pointer loads, both tile orientations, token splits and head chunks.
2. speed at 16384 tokens in bf16: a grid of configs on the 1.3B shape, its best configs
   on 370M, (H16, D64) and 1.3B with 4 kv heads; beside the split backward as dispatched
   (flash_mhf_bwd_dq + flash_mhf_bwd_dkv) and the forward as dispatched, in one process.
   TFLOP/s count 12 T H I D for the backward (docs/CONTRACTS.md) and 18 T H I D for
   forward + backward; every timed config's gradients are checked against float64 first.
Candidates compile in parallel worker processes first (mhfgen.tuning.compile).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import torch
import triton

from mhfgen import kernels
from mhfgen.kernels.configs import spec_of
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.tuning.compile import CompilePool
from mhfgen.validation import check_flash_mhf_inputs
from mhfgen.variants.flash_mhf_bwd_fused import Config, flash_mhf_bwd_fused
from mhfgen.verification import Case, make_inputs, reference_outputs
from mhfgen.workspace import workspace_bytes

GRADS = ("dq", "dr", "dk", "du", "dv")
KERNEL = "flash_mhf_bwd_fused"

VERIFY_CASES = [
    Case("1.3B-slice", 2, 300, 16, 16, 128, 22, 256),
    Case("L=1", 1, 1, 8, 8, 128, 11, 256),
    Case("L=37,Hkv<H", 1, 37, 8, 2, 128, 4, 128),
    Case("D=96,De=80", 2, 150, 8, 8, 96, 8, 80),
    Case("E=1", 1, 200, 4, 4, 64, 1, 512),
    Case("Hkv<H,D64", 3, 100, 16, 4, 64, 11, 256),
]
VERIFY_CONFIGS = {
    "tma T": Config(
        block_m=64,
        block_n=64,
        num_warps=8,
        num_stages=2,
        transpose_acc=True,
        tma=True,
        head_chunk=2,
    ),
    "tma tanh ts2": Config(
        block_m=64,
        block_n=32,
        num_warps=8,
        num_stages=2,
        transpose_acc=True,
        tma=True,
        sigmoid="tanh",
        token_splits=2,
    ),
    "ptr": Config(block_m=64, block_n=64, num_warps=8, num_stages=2, head_chunk=4),
    "ptr T ts3": Config(
        block_m=64,
        block_n=32,
        num_warps=4,
        num_stages=1,
        transpose_acc=True,
        token_splits=3,
        head_chunk=16,
    ),
}
SPEED_SHAPES = {  # name: (H, Hkv, D, E, De)
    "1.3B": (16, 16, 128, 22, 256),
    "370M": (8, 8, 128, 11, 256),
    "H16D64": (16, 16, 64, 11, 256),
    "1.3B-gqa4": (16, 4, 128, 22, 256),
}
TILES = [
    (64, 64, 8, 1),
    (64, 64, 8, 2),
    (64, 64, 8, 3),
    (64, 32, 8, 2),
    (64, 32, 8, 3),
    (128, 32, 8, 2),
    (128, 64, 8, 1),
    (128, 64, 8, 2),
    (64, 128, 8, 1),
    (64, 32, 4, 2),
    (128, 32, 8, 3),
]


def fused(inputs, config):
    return flash_mhf_bwd_fused(*inputs, config=config)


def split(inputs):
    dq, dr = kernels.backward_dq(*inputs)
    dk, du, dv = kernels.backward_dkv(*inputs)
    return dq, dr, dk, du, dv


def errors(out, ref) -> dict:
    return {g: relative_error(o, ref[g]) for g, o in zip(GRADS, out)}


def verify(quick: bool) -> list:
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        bar = tolerance(dtype, grad=True)
        for case in VERIFY_CASES[:3] if quick else VERIFY_CASES:
            inputs = make_inputs(case, dtype, "cuda")
            ref = reference_outputs(*inputs)
            for name, config in VERIFY_CONFIGS.items():
                if config.tma and config.block_m % (case.heads // case.kv_heads):
                    continue
                try:
                    err = errors(fused(inputs, config), ref)
                    worst = max(err.values())
                    rows.append(
                        (
                            str(dtype)[6:],
                            case.name,
                            name,
                            f"{worst:.2e}",
                            "ok" if worst <= bar else "FAIL",
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - a failing config is a row
                    rows.append(
                        (
                            str(dtype)[6:],
                            case.name,
                            name,
                            "-",
                            f"ERROR {type(exc).__name__}: {str(exc)[:80]}",
                        )
                    )
                print(*rows[-1], flush=True)
    return rows


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40)


def speed_shape(name, shape, configs, pool, tokens) -> list:
    H, Hkv, D, E, De = shape
    case = Case(name, tokens // 2048, 2048, H, Hkv, D, E, De)
    inputs = make_inputs(case, torch.bfloat16, "cuda")
    problem = check_flash_mhf_inputs(*inputs[:5])
    spec = spec_of(problem, inputs[0])
    flops = 2 * tokens * H * E * De * D  # one GEMM unit
    ref = reference_outputs(*inputs)
    bar = tolerance(torch.bfloat16, grad=True)
    t0 = time.time()
    failures = pool.compile(spec, tokens, [(KERNEL, c) for c in configs])
    print(f"{name}: compiled {len(configs)} configs in {time.time() - t0:.0f} s", flush=True)
    t_fwd = bench(lambda: kernels.forward(*inputs[:5]))
    t_split = bench(lambda: split(inputs))
    err_split = max(errors(split(inputs), ref).values())
    rows = [
        (
            name,
            "split (dispatched dq + dkv)",
            f"{t_split:.3f}",
            f"{6 * flops / t_split / 1e9:.0f}",
            f"{9 * flops / (t_fwd + t_split) / 1e9:.0f}",
            f"{err_split:.2e}",
            "-",
        )
    ]
    print(*rows[-1], f"(forward {t_fwd:.3f} ms, {3 * flops / t_fwd / 1e9:.0f} TFLOP/s)", flush=True)
    for config, failure in zip(configs, failures):
        label = config.describe()
        if failure is not None:
            rows.append((name, label, "-", "-", "-", "-", f"{failure}"[:60]))
            print(*rows[-1], flush=True)
            continue
        try:
            err = max(errors(fused(inputs, config), ref).values())
            if err > bar:
                rows.append((name, label, "-", "-", "-", f"{err:.2e}", "WRONG"))
                print(*rows[-1], flush=True)
                continue
            t = bench(lambda: fused(inputs, config))
            ws = workspace_bytes(spec, config, tokens) >> 20
            rows.append(
                (
                    name,
                    label,
                    f"{t:.3f}",
                    f"{6 * flops / t / 1e9:.0f}",
                    f"{9 * flops / (t_fwd + t) / 1e9:.0f}",
                    f"{err:.2e}",
                    f"{ws} MiB",
                )
            )
        except Exception as exc:  # noqa: BLE001
            rows.append((name, label, "-", "-", "-", "-", f"{type(exc).__name__}"[:60]))
        print(*rows[-1], flush=True)
    timed = [(float(r[2]), c) for r, c in zip(rows[1:], configs) if r[2] != "-"]
    if timed:
        best = min(timed, key=lambda x: x[0])[1]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fused(inputs, best)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) >> 20
        torch.cuda.reset_peak_memory_stats()
        split(inputs)
        torch.cuda.synchronize()
        peak_split = (torch.cuda.max_memory_allocated() - base) >> 20
        print(
            f"{name}: best {best.describe()}: backward peak {peak} MiB above the inputs "
            f"(split: {peak_split} MiB)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=14)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--skip-verify", action="store_true")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    vrows = [] if args.skip_verify else verify(args.quick)
    pool = CompilePool("cuda", args.jobs)
    grid = [
        Config(
            block_m=bm,
            block_n=bn,
            num_warps=w,
            num_stages=st,
            transpose_acc=t,
            tma=True,
            head_chunk=16,
        )
        for (bm, bn, w, st), t in itertools.product(TILES, (True, False))
    ]
    rows = speed_shape("1.3B", SPEED_SHAPES["1.3B"], grid, pool, args.tokens)
    timed = sorted(
        ((float(r[2]), c) for r, c in zip(rows[1:], grid) if r[2] != "-"), key=lambda x: x[0]
    )
    top = [c for _, c in timed[:4]]
    more = []
    for c in top:
        more.append(dataclasses.replace(c, sigmoid="tanh"))
        for hc, ts in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (4, 1)):
            more.append(dataclasses.replace(c, head_chunk=hc, token_splits=ts))
    rows += speed_shape("1.3B", SPEED_SHAPES["1.3B"], more, pool, args.tokens)[1:]
    timed = sorted(
        ((float(r[2]), c) for r, c in zip(rows[1:], grid + more) if r[2] != "-"), key=lambda x: x[0]
    )
    top = [c for _, c in timed[:3]]
    for name in ("370M", "H16D64", "1.3B-gqa4"):
        configs = []
        for c in top:
            for hc in (1, 2, 16):
                configs.append(dataclasses.replace(c, head_chunk=hc))
        rows += speed_shape(name, SPEED_SHAPES[name], configs, pool, args.tokens)
    pool.close()
    print("\n## verify (worst relative error of the five gradients vs float64)")
    for r in vrows:
        print("|", " | ".join(r), "|")
    print(
        f"\n## speed (bf16, {args.tokens} tokens): shape | config | ms | bwd TFLOP/s "
        "| fwd+bwd TFLOP/s | error | workspace"
    )
    for r in rows:
        print("|", " | ".join(r), "|")


if __name__ == "__main__":
    main()
