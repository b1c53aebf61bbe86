"""The training step on a GPU, one run: forward and forward + backward of the FlashMHF op
(the backward in the form the dispatcher picks from the databases), the SwiGLU FFN of
equal FLOPs, and the FlashMHF layer beside the SwiGLU layer, with peak memory.

    python3 benchmarks/train_step_check.py [--tokens 16384]

Shapes: 370M, 1.3B and (1024, 16, 64, 2816, 11) in bf16 (mhfgen.bench's methods and
timer). Prints the dispatcher's backward form and variant per shape, then a table.
"""

from __future__ import annotations

import argparse

import torch

from mhfgen import bench, dispatch
from mhfgen.presets import PRESETS
from mhfgen.spec import KernelSpec

METHODS = ("mhfgen", "swiglu", "layer_mhfgen", "layer_swiglu")


def problems(tokens: int) -> dict:
    out = {}
    for name in ("370M", "1.3B"):
        p = PRESETS[name]
        out[name] = bench.BenchProblem(
            p.heads,
            p.kv_heads or p.heads,
            p.head_dim,
            p.intermediate,
            p.experts,
            "bfloat16",
            tokens,
        )
    out["H16D64"] = bench.BenchProblem(16, 16, 64, 2816, 11, "bfloat16", tokens)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    device = torch.device("cuda")
    probs = problems(args.tokens)
    for name, p in probs.items():
        spec = KernelSpec(
            p.heads, p.kv_heads, p.head_dim, p.experts, p.expert_dim, "bfloat16", "sm90"
        )
        form = dispatch.backward_form(spec, p.tokens, device)
        fused = dispatch.explain_choice("bwd", spec, p.tokens, device)
        print(
            f"{name}: backward form {form}; op bwd's choice {fused.variant} "
            f"{fused.config.describe()} ({fused.source}, {fused.ms} ms stored)",
            flush=True,
        )
    rows = bench.run_benchmarks(
        probs.values(),
        METHODS,
        device=device,
        repeat=3,
        on_row=lambda r, i, n: print(
            f"[{i + 1}/{n}] {r.shape} "
            f"{r.method} {r.pass_} "
            f"{r.median_ms} ms {r.tflops} "
            f"TFLOP/s {r.peak_mib} MiB "
            f"{r.status} {r.error}",
            flush=True,
        ),
    )
    print("\n| shape | method | pass | ms | TFLOP/s | peak MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ms = f"{r.median_ms:.3f}" if r.median_ms else "-"
        tf = f"{r.tflops:.0f}" if r.tflops else "-"
        mem = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "-"
        print(f"| {r.shape} | {r.method} | {r.pass_} | {ms} | {tf} | {mem} |")


if __name__ == "__main__":
    main()
