"""What bounds the shipped Gluon kernels of one GPU, from their sm90 compiles (no GPU needed).

For every warp-specialised (Gluon) winner of the shipped database on `--gpu` at `--tokens`
tokens, compile its kernel for sm90 on this machine and print: the shared memory one
program allocates and so the programs that fit on an SM (228 KiB each on H100 and H200),
ptxas's spilled bytes, the wgmma instructions in the PTX, the grid (programs per launch)
and the waves it makes on `--sms` SMs, with the share of the last wave's SMs left idle,
and the stored time. Each consumer's registers are set at run time (setmaxnreg: the
config's `regs P/C`), so ptxas's figure before that (168 for three warpgroups) is not shown.

    python3 benchmarks/kernel_limits.py --gpu "NVIDIA H100 80GB HBM3" --tokens 16384

With --bounds, a second table sets each winner's stored time against three bounds that its
compile fixes, per iteration of a consumer warpgroup's main loop (one weight tile of the
forward and dQ/dR, two with the forward's unroll_tiles = 2; one row tile of dK/dU/dV),
both consumers of an SM together (a model, not a profile):
- tensor: the loop's wgmma multiply-adds (from the PTX) over 2048 a clock per SM, bf16
  dense (989 TFLOP/s at 1.83 GHz, the H100 SXM datasheet's), 4096 for e4m3 operands;
- shared memory: the bytes the iteration moves through shared memory over 128 a clock:
  each wgmma's operands read from it (B always, A unless it is in registers: an m64nNk16
  step reads 64 * 16 and N * 16 elements), the loop's st.shared/stmatrix stores, and the
  TMA bytes the producer's loop expects per tile (its mbarrier expect_tx);
- issue: the SASS instructions of one consumer warp's loop, two consumer warps on each SM
  sub-partition issuing one instruction a clock.
The stored time is spread over the iterations an SM runs: the kernel's multiply-adds
(5, 6 or 3 GEMM units of T H I Dp, Dp the padded head_dim of the backward kernels) over
each iteration's, over the SMs, at --clock-ghz.

With --model STEM, nothing is read from the database: the variant's heuristic config (or
--config, its JSON) is compiled for each of --shapes and the three bounds are printed
without a measured time, with its spilled bytes and whether ptxas kept its wgmma
asynchronous: the model of a schedule no GPU has timed yet.

    python3 benchmarks/kernel_limits.py --model flash_mhf_bwdt_ws --shapes 1.3B,H16-Hkv16-D64-E11-De256
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

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


#: multiply-adds a clock per SM (bf16 dense wgmma; e4m3 twice as many) and shared-memory
#: bytes a clock per SM
MMA_PER_CLOCK = 2048
SMEM_BYTES_PER_CLOCK = 128
#: GEMM units (T H I D multiply-adds each) a kernel of each op executes
OP_UNITS = {"fwd": 3, "bwd_dq": 5, "bwd_dkv": 6, "bwd": 8}


@contextlib.contextmanager
def captured_asm():
    """Within the block, each Triton compile's PTX and cubin (the last one's) in the dict
    yielded."""
    import triton

    compile_, out = triton.compile, {}

    def capture(*args, **kwargs):
        compiled = compile_(*args, **kwargs)
        out.update(ptx=compiled.asm["ptx"], cubin=compiled.asm["cubin"])
        return compiled

    triton.compile = capture
    try:
        yield out
    finally:
        triton.compile = compile_


def innermost_loops(lines: list[str], label: str, branch: str) -> list[list[str]]:
    """The bodies of the innermost loops of a listing: from a label to the last backward
    branch to it, where no other such loop lies inside."""
    at = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(label, line.strip()))}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(branch, line)
        if m and m.group(1) in at and at[m.group(1)] < i:
            loops.append((at[m.group(1)], i))
    return [
        lines[a : b + 1]
        for a, b in loops
        if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)
    ]


def ptx_loops(ptx: str) -> tuple[list[tuple[int, float, int]], int]:
    """From the PTX: per consumer main loop (an innermost loop that issues wgmma), its
    multiply-adds, the clocks they take one SM's tensor cores (MMA_PER_CLOCK; e4m3 twice
    as fast) and the shared-memory bytes its wgmma operands and stores move, per iteration
    of one warpgroup; and the TMA bytes the producer's loop (an innermost loop that copies
    by TMA, without wgmma) expects per iteration."""
    loops = innermost_loops(
        ptx.splitlines(), r"^(\$L__BB\d+_\d+):", r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);"
    )
    consumers, tma = [], 0
    for body in loops:
        macs = smem = 0
        clocks = 0.0
        for line in body:
            mma = re.search(r"wgmma\.mma_async\S*\.m64n(\d+)k(\d+)\S*\.(bf16|f16|e4m3)", line)
            if mma:
                n, k = int(mma.group(1)), int(mma.group(2))
                size = 1 if mma.group(3) == "e4m3" else 2
                a_in_registers = line.split("}", 1)[1].lstrip(", ").startswith("{")
                macs += 64 * n * k
                clocks += 64 * n * k / (MMA_PER_CLOCK * (2 if size == 1 else 1))
                smem += (n * k + (0 if a_in_registers else 64 * k)) * size
            store = re.search(r"\bst\.shared(?:\.v(\d))?\.[bfsu](\d+)", line)
            if store:
                smem += int(store.group(1) or 1) * int(store.group(2)) // 8 * 128
            matrices = re.search(r"stmatrix\S*\.x(\d)", line)
            if matrices:  # per warp: x 8 x 8 16-bit elements; four warps
                smem += int(matrices.group(1)) * 64 * 2 * 4
        if macs:
            consumers.append((macs, clocks, smem))
        elif any("cp.async.bulk.tensor" in line for line in body):
            tma = max(
                tma,
                sum(
                    int(m.group(1))
                    for line in body
                    if (m := re.search(r"expect_tx\S*\s.*,\s*(\d+);", line))
                ),
            )
    return consumers, tma


def sass_loop_instructions(cubin: bytes) -> list[int]:
    """SASS instructions of each innermost loop that issues wgmma (nvdisasm of `cubin`)."""
    from triton import knobs

    nvdisasm = Path(knobs.nvidia.ptxas.path).with_name("nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run(
            [str(nvdisasm), "-c", str(path)], capture_output=True, text=True, check=True
        ).stdout
    loops = innermost_loops(sass.splitlines(), r"^\.(L_x_\d+):", r"BRA\s+`\(\.(L_x_\d+)\)")
    return [
        sum(1 for line in body if re.match(r"\s*/\*[0-9a-f]+\*/\s+\S", line))
        for body in loops
        if any("GMMA" in line for line in body)
    ]


def loop_bounds(config, asm) -> tuple[tuple[float, float, float], str, float] | None:
    """((tensor, shared-memory, issue) clocks per consumer-loop iteration of both consumers
    of an SM, the 'MACs / shared bytes / SASS per warp' cell, the MACs of one consumer's
    iteration) from a compile's PTX and cubin; None where no consumer loop is found."""
    consumers, tma = ptx_loops(asm["ptx"])
    instructions = sass_loop_instructions(asm["cubin"])
    if not consumers or not instructions:
        return None
    macs, clocks, smem = consumers[0]
    tiles = getattr(config, "unroll_tiles", 1)
    moved = 2 * smem + tiles * tma
    limits = (2 * clocks, moved / SMEM_BYTES_PER_CLOCK, 2 * max(instructions))
    return limits, f"{macs * 2 / 1e6:.2f} M / {moved / 1024:.0f} KiB / {max(instructions)}", macs


def bounds_row(w, spec, config, asm, sms: int, clock_ghz: float) -> tuple[str, ...]:
    """The --bounds cells of one winner: clocks per consumer-loop iteration (both consumers
    of an SM) measured and as each bound allows, with the bound's share of the measured."""
    from mhfgen.kernels.sm90 import backward_head_dim_pad

    found = loop_bounds(config, asm)
    if found is None:
        return ("-",) * 5
    limits, cell, macs = found
    head_dim = spec.head_dim if w.key.op == "fwd" else backward_head_dim_pad(spec)
    total = OP_UNITS[w.key.op] * w.key.tokens * spec.heads * spec.intermediate * head_dim
    per_iteration = w.ms * 1e-3 * clock_ghz * 1e9 * sms / (total / (2 * macs))
    return (
        f"{per_iteration:.0f}",
        *(f"{x:.0f} ({x / per_iteration:.0%})" for x in limits),
        cell,
    )


def model_spec(name: str):
    """The bf16 sm90 KernelSpec of a --model shape: a preset's name ('-kvN' for N kv
    heads), or a spec key's sizes, 'H16-Hkv16-D64-E11-De256'."""
    from mhfgen import presets
    from mhfgen.spec import KernelSpec

    sizes = re.fullmatch(r"H(\d+)-Hkv(\d+)-D(\d+)-E(\d+)-De(\d+)", name)
    if sizes:
        return KernelSpec(*(int(x) for x in sizes.groups()), "bfloat16", "sm90")
    p = presets.shape(name)
    return KernelSpec(p.heads, p.kv_heads, p.head_dim, p.experts, p.expert_dim, "bfloat16", "sm90")


def model(stem: str, shapes: list[str], config_json: str | None) -> int:
    """--model: the bounds of `stem`'s heuristic config (or the one config_json gives) on
    each preset shape, compiled here, no database and no time."""
    import json

    from mhfgen import registry

    variant = registry.get(stem)
    if variant.family != "gluon":
        print(f"{stem} is not a Gluon variant: no sm90 compile to read", file=sys.stderr)
        return 1
    head = ("shape", "config", "tensor bound", "shared-memory bound", "issue bound")
    head += ("MACs / shared bytes / SASS per warp", "spill B", "wgmma")
    rows = []
    for name in shapes:
        spec = model_spec(name)
        reason = variant.unsupported(spec)
        if reason:
            rows.append((name, "-", "-", "-", "-", reason, "-", "-"))
            continue
        config = (
            variant.Config.from_dict(json.loads(config_json))
            if config_json
            else variant.default_config(spec, 16384, 132)
        )
        with captured_asm() as asm:
            report = importlib.import_module(variant.__module__).compile_sm90(spec, config)
        found = loop_bounds(config, asm)
        limits, cell = (found[0], found[1]) if found else ((), "-")
        serial = "serialised" if report.wgmma_serialized else "asynchronous"
        cells = (name, config.describe(), *(f"{x:.0f}" for x in limits))
        rows.append((*cells, cell, str(report.spill_bytes), serial))
    print(" | ".join(head))
    print("|".join("---" for _ in head))
    for cells in rows:
        print(" | ".join(cells))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", default="NVIDIA H100 80GB HBM3", help="the winners' GPU name")
    parser.add_argument("--tokens", type=int, default=16384, help="the winners' token count")
    parser.add_argument("--sms", type=int, default=132, help="SMs of that GPU (default 132)")
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="also set each winner's time against its tensor, shared-memory and issue bounds",
    )
    parser.add_argument(
        "--clock-ghz",
        type=float,
        default=1.83,
        help="the SM clock the stored times are counted at, for --bounds (default 1.83)",
    )
    parser.add_argument(
        "--model",
        metavar="STEM",
        help="instead: compile this Gluon variant's heuristic (or --config) on --shapes and "
        "print its bounds, no database and no time",
    )
    parser.add_argument(
        "--shapes",
        default="1.3B,370M,1.3B-kv4,128M",
        help="with --model: comma list of presets ('-kvN' for N kv heads) or spec keys' "
        "sizes, e.g. H16-Hkv16-D64-E11-De256",
    )
    parser.add_argument("--config", help="with --model: the config as JSON (default: heuristic)")
    args = parser.parse_args(argv)
    if args.model:
        return model(args.model, [s for s in args.shapes.split(",") if s], args.config)

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
    bounds_head = ("shape", "variant", "config", "clocks per iteration", "tensor bound")
    bounds_head += ("shared-memory bound", "issue bound", "MACs / shared bytes / SASS per warp")
    rows, bounds = [], []
    for w in sorted(winners, key=lambda w: (w.key.head_dim, w.key.heads, w.key.kv_heads, w.key.op)):
        k, variant = w.key, registry.get(w.key.variant)
        spec = KernelSpec(k.heads, k.kv_heads, k.head_dim, k.experts, k.expert_dim, k.dtype, "sm90")
        config = variant.coerce(w.config)
        with captured_asm() as asm:
            report = importlib.import_module(variant.__module__).compile_sm90(spec, config)
        programs = grid_size(spec, k.variant, k.tokens, config)
        waves = programs / args.sms if programs else None
        idle = (math.ceil(waves) - waves) / math.ceil(waves) if waves else None
        shape = f"H{k.heads}/{k.kv_heads} D{k.head_dim} E{k.experts}"
        cells = (shape, k.variant, config.describe(), f"{report.shared / 1024:.0f}")
        cells += (str(SMEM_PER_SM // max(report.shared, 1)), str(report.spill_bytes))
        cells += (str(report.wgmma), str(programs or "-"))
        cells += (f"{waves:.2f}" if waves else "-", f"{idle:.0%}" if idle is not None else "-")
        rows.append((*cells, f"{w.ms:.3f}"))
        if args.bounds and k.op in OP_UNITS:
            bound = bounds_row(w, spec, config, asm, args.sms, args.clock_ghz)
            bounds.append((shape, k.variant, config.describe(), *bound))
    for table_head, table in ((head, rows), (bounds_head, bounds)):
        if table:
            print(" | ".join(table_head))
            print("|".join("---" for _ in table_head))
            for cells in table:
                print(" | ".join(cells))
            print()
    return 0


if __name__ == "__main__":
    # compiling needs Triton's compiler, not its interpreter (which mhfgen turns on when it
    # is imported first on a machine without CUDA): set before anything imports either
    os.environ["TRITON_INTERPRET"] = "0"
    sys.exit(main())
