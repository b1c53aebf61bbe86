"""What bounds the shipped Gluon kernels of one GPU, from their sm90 compiles (no GPU needed).

For every warp-specialised (Gluon) winner of the shipped database on `--gpu` at `--tokens`
tokens, compile its kernel for sm90 on this machine and print: the shared memory one
program allocates and so the programs that fit on an SM (228 KiB each on H100 and H200),
ptxas's spilled bytes, the wgmma instructions in the PTX, the grid (programs per launch)
and the waves it makes on `--sms` SMs, with the share of the last wave's SMs left idle,
and the stored time. Each consumer's registers are set at run time (setmaxnreg: the
config's `regs P/C`), so ptxas's figure before that (168 for three warpgroups) is not shown.

    python3 benchmarks/kernel_limits.py --gpu "NVIDIA H100 80GB HBM3" --tokens 16384
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

SMEM_PER_SM = 228 * 1024


def grid_size(spec, variant: str, tokens: int, config) -> int | None:
    """Programs of one launch of the winner's kernel, as its launcher sizes the grid
    (None where it is not modelled here)."""
    from mhfgen.tiling import cdiv
    from mhfgen.variants import _gluon, flash_mhf_bwd_dq_ws

    if variant in ("flash_mhf_bwd_dkv_ws", "flash_mhf_bwd_dkvt_ws"):  # _gluon.GluonDkv
        _, splits, _ = _gluon.token_split_plan(tokens, config)
        return spec.intermediate // config.block_n * spec.kv_heads * splits
    if variant == "flash_mhf_bwd_dq_ws":
        return cdiv(tokens, flash_mhf_bwd_dq_ws.BLOCK_M) * spec.heads
    if variant in ("flash_mhf_fwd_ws", "flash_mhf_fwd_fp8_ws"):
        return _gluon.forward_work_tiles(spec, config, tokens)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="NVIDIA H100 80GB HBM3", help="the winners' GPU name")
    parser.add_argument("--tokens", type=int, default=16384, help="the winners' token count")
    parser.add_argument("--sms", type=int, default=132, help="SMs of that GPU (default 132)")
    args = parser.parse_args(argv)

    from mhfgen import paths, registry
    from mhfgen.spec import KernelSpec
    from mhfgen.tuning.db import TuningDB

    with TuningDB.open(paths.shipped_db_path(), readonly=True) as db:
        winners = [
            w
            for w in db.winners()
            if w.key.gpu_name == args.gpu
            and w.key.tokens == args.tokens
            and registry.get(w.key.variant).family == "gluon"
        ]
    if not winners:
        print(f"no Gluon winners of {args.gpu!r} at {args.tokens} tokens", file=sys.stderr)
        return 1
    head = ("shape", "variant", "config", "smem KiB", "per SM by smem", "spill B", "wgmma")
    head += ("programs", "waves", "tail idle", "ms")
    print(" | ".join(head))
    print("|".join("---" for _ in head))
    for w in sorted(winners, key=lambda w: (w.key.head_dim, w.key.heads, w.key.kv_heads, w.key.op)):
        k, variant = w.key, registry.get(w.key.variant)
        spec = KernelSpec(k.heads, k.kv_heads, k.head_dim, k.experts, k.expert_dim, k.dtype, "sm90")
        config = variant.coerce(w.config)
        report = importlib.import_module(variant.__module__).compile_sm90(spec, config)
        programs = grid_size(spec, k.variant, k.tokens, config)
        waves = programs / args.sms if programs else None
        idle = (math.ceil(waves) - waves) / math.ceil(waves) if waves else None
        shape = f"H{k.heads}/{k.kv_heads} D{k.head_dim} E{k.experts}"
        cells = (shape, k.variant, config.describe(), f"{report.shared / 1024:.0f}")
        cells += (str(SMEM_PER_SM // max(report.shared, 1)), str(report.spill_bytes))
        cells += (str(report.wgmma), str(programs or "-"))
        cells += (f"{waves:.2f}" if waves else "-", f"{idle:.0%}" if idle is not None else "-")
        print(" | ".join((*cells, f"{w.ms:.3f}")))
    return 0


if __name__ == "__main__":
    # compiling needs Triton's compiler, not its interpreter (which mhfgen turns on when it
    # is imported first on a machine without CUDA): set before anything imports either
    os.environ["TRITON_INTERPRET"] = "0"
    sys.exit(main())
