"""Where a decode call's time goes, read from inside the kernel.

    python benchmarks/decode_timeline.py [--shapes 1.3B,370M] [--tokens 1,8]
                                         [--weights dense,fp8] [--json FILE]
    python benchmarks/decode_timeline.py --compile-check   (no GPU needed)

The decode suite (`mhfgen bench --suite decode`) gives a call's time; this splits it. For
each (shape, tokens, weights) it renders the dispatcher's kernel for the call, the
16-bit weights' Triton-language split forward (flash_mhf_fwd) or the FP8 W8A8 Gluon
split forward (flash_mhf_fwd_fp8_ws), with reads of the GPU's global timer (%globaltimer,
ns) added at fixed points, runs it in one CUDA graph of at least 32 back-to-back calls,
each on its own copy of the weights (as the suite does), and reports medians over the
calls of:

    start skew   the last program's start after the first's
    first tile   (FP8) a consumer's first K/U tile landed, after the call's first start
    loop end     the median program's weight loop done, after the call's first start
    tail         the slowest program's loop end after the median's (programs stream at
                 uneven rates)
    reduction    the split reduction: its last program done after the slowest loop end
                 (partial stored, fence and ticket, the partials read, the output stored)
    gap          the next call's first program start after this call's last timer read
                 (the kernel's exit, the next launch and its prologue)
    span         one call's first start to the next call's first start
    stream       weight bytes over the median loop time (TB/s)

The instrumented kernel's outputs are checked bitwise against the uninstrumented one's,
and both are timed (`us_plain`, `us_timed`; the timer reads cost little, but at 64
tokens up to 2 us a call). The global timer advances in steps of 0.256 us on an H100:
each phase is within a step, and only the medians over the graph's calls carry meaning. --compile-check patches the
kernels of the 1.3B decode and compiles them for sm90 on any machine, so a template
change that breaks the patches shows before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import mhfgen  # noqa: F401  (first: switches Triton's interpreter on where there is no GPU)

# isort: split
import torch

from mhfgen import codegen, registry
from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_fwd as fwd
from mhfgen.variants import flash_mhf_fwd_fp8_ws as f8

#: calls one timed graph holds at least (mhfgen.graph_timing.CALLS_PER_GRAPH)
CALLS = 32
#: how every point is timed (the environment's `timer`)
TIMER = "CUDA graph of >= 32 calls, each on its own copy of the weights; %globaltimer inside"
#: timer values a program stores: start, first tile (FP8), loop end, program end
SLOTS = 4
_TIMER = 'inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype={lang}.int64, is_pure=False, pack=1)'


def _patch(src: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        if src.count(old) != 1:
            raise RuntimeError(
                f"decode_timeline: the generated kernel changed; cannot find {old!r}"
            )
        src = src.replace(old, new)
    return src


def instrument_triton(src: str) -> str:
    """flash_mhf_fwd's source (a split config) with a TIMES (programs, SLOTS) int64
    argument after `rows`, its program's start, loop end and end stored there."""
    t = "tl." + _TIMER.format(lang="tl")
    return _patch(
        src,
        [
            ("    seqlen, rows,\n", "    seqlen, rows, TIMES,\n"),
            (
                "    pid_h = tl.program_id(1)\n",
                f"    pid_h = tl.program_id(1)\n    t_start = {t}\n",
            ),
            ("    o_rows = O + ", f"    t_loop = {t}\n    o_rows = O + "),
        ],
    ).rstrip() + (
        f"\n    t_end = {t}\n"
        "    slot = TIMES + ((tl.program_id(0) * tl.num_programs(1) + pid_h) * tl.num_programs(2)"
        f" + tl.program_id(2)) * {SLOTS}\n"
        "    tl.store(slot, t_start)\n    tl.store(slot + 1, t_start)\n"
        "    tl.store(slot + 2, t_loop)\n    tl.store(slot + 3, t_end)\n"
    )


def instrument_fp8(src: str) -> str:
    """flash_mhf_fwd_fp8_ws's source (a one-consumer split config) with a TIMES
    (programs, SLOTS) int64 argument after `tokens`: its consumer's start, first K/U tile,
    loop end and end (after the split reduction)."""
    t = "gl." + _TIMER.format(lang="gl")
    return _patch(
        src,
        [
            (
                "seqlen, tokens,\n                                BLOCK_M: gl.constexpr",
                "seqlen, tokens, TIMES,\n                                BLOCK_M: gl.constexpr",
            ),
            (
                "stride_re, seqlen, tokens, 0, BLOCK_M",
                "stride_re, seqlen, tokens, TIMES, 0, BLOCK_M",
            ),
            (
                "tokens, C: gl.constexpr, BLOCK_M: gl.constexpr",
                "tokens, TIMES, C: gl.constexpr, BLOCK_M: gl.constexpr",
            ),
            (
                "    h0, tb0 = _tile_coords(gl.program_id(0), tokens, BLOCK_M)\n    head = h0 + C",
                f"    t_start = {t}\n"
                "    h0, tb0 = _tile_coords(gl.program_id(0), tokens, BLOCK_M)\n    head = h0 + C",
            ),
            (
                "    mbarrier.wait(ku_ready.index(0), 0)\n",
                f"    mbarrier.wait(ku_ready.index(0), 0)\n    t_first = {t}\n",
            ),
            (  # the loop's last O product done (then pdl's signal, if any)
                "    o = warpgroup_mma_wait(num_outstanding=0, deps=(o, ))\n",
                f"    o = warpgroup_mma_wait(num_outstanding=0, deps=(o, ))\n    t_loop = {t}\n",
            ),
            (
                "    mbarrier.arrive(q_free.index(C))\n",
                f"    t_end = {t}\n"
                "    slot = TIMES + (gl.program_id(0) * gl.num_programs(1) + gl.program_id(1))"
                f" * {SLOTS}\n"
                "    gl.store(slot, t_start)\n    gl.store(slot + 1, t_first)\n"
                "    gl.store(slot + 2, t_loop)\n    gl.store(slot + 3, t_end)\n"
                "    mbarrier.arrive(q_free.index(C))\n",
            ),
        ],
    )


def _module(source: str, name: str, folder: Path):
    """The module of `source`, written to `folder` (Triton's JIT reads a kernel's source
    through its file)."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summarise(times: torch.Tensor) -> dict:
    """Medians over consecutive calls of the module doc's phases, in us, from `times`
    (calls, programs, SLOTS) of %globaltimer ns."""
    t = times.double().cpu()
    phases: dict[str, list] = {}
    for i in range(t.shape[0] - 1):
        start, first, loop, end = (t[i, :, j] for j in range(SLOTS))
        s0 = start.min()
        nxt = t[i + 1, :, 0].min()
        values = {
            "start skew": start.max() - s0,
            "first tile": first.median() - s0,
            "loop end": loop.median() - s0,
            "tail": loop.max() - loop.median(),
            "reduction": end.max() - loop.max(),
            "gap": nxt - end.max(),
            "span": nxt - s0,
            "loop": (loop - start).median(),
        }
        for k, v in values.items():
            phases.setdefault(k, []).append(float(v) / 1e3)
    return {k: round(statistics.median(v), 2) for k, v in phases.items()}


def measure(name: str, spec: KernelSpec, tokens: int, weights: str, folder: Path) -> dict:
    """One point of the module doc on the current CUDA device."""
    from mhfgen import dispatch
    from mhfgen.bench_decode import weight_bytes, weight_copies
    from mhfgen.graph_timing import call_ms, graph_ms, rotation_copies
    from mhfgen.kernels.buffers import split_counters
    from mhfgen.kernels.launch import host_descriptors

    dev = torch.device("cuda", torch.cuda.current_device())
    nbytes = weight_bytes(spec, weights)
    sets = weight_copies(spec, weights, dev, rotation_copies(nbytes))
    gen = torch.Generator().manual_seed(tokens)
    q = torch.randn(1, tokens, spec.heads, spec.head_dim, generator=gen).to(dev, spec.torch_dtype)
    r = torch.softmax(torch.randn(1, tokens, spec.heads, spec.experts, generator=gen), -1).to(dev)
    tag = f"{name}_{tokens}_{weights}".replace(".", "_").replace("-", "_")
    if weights == "fp8":
        kspec = KernelSpec(**{**spec.as_dict(), "dtype": f"{spec.dtype}_e4m3"})
        config = dispatch.choose_config(f8.KERNEL, kspec, tokens, dev)
        w = sets[0]
        plan = f8._make_plan(q, *w[:3], r, w[3], config)
        if len(plan.grid) != 2 or config.consumers != 1:
            raise SystemExit(
                f"{name} T={tokens} fp8: {config.describe()} is not a one-consumer split"
            )
        kernel = _module(
            instrument_fp8(f8.render(kspec, config)), tag, folder
        ).flash_mhf_fwd_fp8_ws_kernel
        grid, programs = plan.grid, plan.grid[0] * plan.grid[1]

        def plain(w):
            return f8.flash_mhf_fwd_fp8_ws(q, *w[:3], r, w[3], config=config)

        def timed(w, out, slot):
            args = f8.arguments(plan, q, *w[:3], r, w[3], out)
            kernel[grid](*host_descriptors(args), slot, **plan.meta)

    else:
        config = dispatch.choose_config(fwd.KERNEL, spec, tokens, dev)
        plan = fwd._make_plan(q, *sets[0], r, config)
        if not plan.splits:
            raise SystemExit(f"{name} T={tokens} dense: {config.describe()} has no split reduction")
        launch = plan.launch
        kernel = _module(instrument_triton(codegen.render(fwd.KERNEL, spec, config)), tag, folder)
        kernel = kernel.flash_mhf_fwd_kernel
        grid, programs = launch.grid, launch.grid[0] * launch.grid[1] * launch.grid[2]
        work = torch.empty((plan.splits, *plan.out_shape), dtype=torch.float32, device=dev)
        counters = split_counters(plan.blocks, dev)

        def plain(w):
            return fwd.flash_mhf_fwd(q, *w, r, config=config)

        def timed(w, out, slot):
            kernel[grid](q, *w, r, work, out, counters, *launch.args, slot, **launch.meta)

    rounds = -(-CALLS // len(sets))
    order = [w for _ in range(rounds) for w in sets]
    times = torch.zeros(len(order), programs, SLOTS, dtype=torch.int64, device=dev)
    outs = [torch.empty_like(q) for _ in order]
    with torch.no_grad():
        want = plain(sets[0])
        timed(sets[0], outs[0], times[0])
        torch.cuda.synchronize()
        same = torch.equal(outs[0], want)
        us_plain = call_ms([lambda w=w: plain(w) for w in sets]) * 1e3
        calls = [lambda i=i, w=w: timed(w, outs[i], times[i]) for i, w in enumerate(order)]
        us_timed = graph_ms(calls) / len(calls) * 1e3
    phases = summarise(times)
    row = dict(
        shape=name,
        tokens=tokens,
        weights=weights,
        config=config.describe(),
        us_plain=round(us_plain, 2),
        us_timed=round(us_timed, 2),
        bitwise=same,
        weight_bytes=nbytes,
        stream_tb_per_s=round(nbytes / (phases["loop"] * 1e-6) / 1e12, 2),
        **{k.replace(" ", "_"): v for k, v in phases.items() if k != "loop"},
    )
    if weights != "fp8":
        row.pop("first_tile")
    return row


def _compile_check() -> int:
    """Patch the 1.3B decode kernels (1 token) and compile them for sm90 (module doc)."""
    import os
    import subprocess

    if os.environ.get("TRITON_INTERPRET") == "1":  # a fresh process compiles for sm90
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-check"]
        return subprocess.run(cmd, env=env).returncode
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    config = registry.get(fwd.KERNEL).default_config(spec, 1, 132)
    with tempfile.TemporaryDirectory() as tmp:
        kernel = _module(
            instrument_triton(codegen.render(fwd.KERNEL, spec, config)), "dense", Path(tmp)
        )
        kernel = kernel.flash_mhf_fwd_kernel
        pointers = {"COUNTERS": "*i32", "TIMES": "*i64", "R": "*fp32", "O": "*fp32"}
        signature = {
            n: "constexpr"
            if n.startswith("BLOCK")
            else pointers.get(n, "*bf16" if n[0].isupper() else "i32")
            for n in kernel.arg_names
        }
        source = ASTSource(
            kernel, signature, {"BLOCK_M": config.block_m, "BLOCK_N": config.block_n}
        )
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        dense = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        fspec = KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90")
        fconfig = f8.default_config(fspec, 1, 132)
        kernel = _module(instrument_fp8(f8.render(fspec, fconfig)), "fp8", Path(tmp))
        kernel = kernel.flash_mhf_fwd_fp8_ws_kernel
        times = {"TIMES": torch.empty(1, dtype=torch.int64)}
        report = f8.compile_sm90(fspec, fconfig, kernel=kernel, extra_args=times)
    reads = dense.asm["ptx"].count("%globaltimer")
    print(
        f"flash_mhf_fwd {config.describe()}: {reads} timer reads, {dense.metadata.shared} B shared"
    )
    print(
        f"flash_mhf_fwd_fp8_ws {fconfig.describe()}: {report.spill_bytes} B spilled, {report.shared} B shared"
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", default="1.3B", help="comma list of presets, PRESET-kv<N> for N kv heads"
    )
    parser.add_argument("--tokens", default="1,8", help="comma list of token counts")
    parser.add_argument("--weights", default="dense,fp8", help="comma list of dense and fp8")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument(
        "--compile-check", action="store_true", help="compile the patched kernels for sm90 only"
    )
    args = parser.parse_args(argv)
    if args.compile_check:
        return _compile_check()
    from mhfgen.presets import shape

    try:
        shapes = [shape(name) for name in args.shapes.split(",")]
    except ValueError as exc:
        print(f"decode_timeline: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        print(
            "decode_timeline needs an sm90 (Hopper) CUDA GPU (--compile-check runs anywhere)",
            file=sys.stderr,
        )
        return 2
    from mhfgen.bench import environment

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in shapes:
            spec = KernelSpec(
                p.heads, p.kv_heads, p.head_dim, p.experts, p.expert_dim, "bfloat16", "sm90"
            )
            for tokens in (int(t) for t in args.tokens.split(",")):
                for weights in args.weights.split(","):
                    row = measure(p.name, spec, tokens, weights, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            timer = SimpleNamespace(label=TIMER)
            env = environment(torch.device("cuda"), timer)
            json.dump({"environment": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
