"""Host overhead of a dispatched launch against a bare launch of the same compiled kernel.

    python benchmarks/dispatch_overhead.py [--json FILE]      # on a GPU (about 20 s)
    python benchmarks/dispatch_overhead.py --cpu-smoke        # the script's logic, interpreter

The forward kernel of the 370M spec at --tokens tokens is tuned into a temporary database
(MHFGEN_DB) with one winner for exactly this shape, so the dispatcher answers from the
'exact' step; the launcher's plan gives the compiled kernel, grid and arguments that the
bare launch replays (the same kernel, grid and arguments, into one reused output). Each
row is the host time per call: `calls` back-to-back calls timed with perf_counter (fewer
than the launch queue holds, so the CPU never waits for the GPU), synchronised after the
clock stops, median (and min) of `repeats`, the rows taking turns within each repeat.

Rows: the bare launch `kernel[grid](...)` (JITFunction.run: binds and specialises the
arguments, then calls the binary's launcher); the binary's launcher alone
(`CompiledKernel.run`, what kernels.launch.DirectLaunch calls after the first launch: the
floor); the launcher with an explicit config (plan lookup, output allocation, launch); the
launcher with dispatch (what mhfgen users get); `mhfgen.flash_mhf` under no_grad (which
calls the launcher directly) and the custom op `torch.ops.mhfgen.flash_mhf` (what
autograd and torch.compile go through); `triton.autotune` of the same kernel with two
configs (16 to 19 us in the reference figures of docs/PERFORMANCE.md); `choose_config`
alone. The bar (docs/CONTRACTS.md): launcher with dispatch minus bare launch <= 10 us.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

import mhfgen  # first: switches Triton's interpreter on where there is no GPU

# isort: split
import torch
import triton

from mhfgen import dispatch
from mhfgen.codegen import template_hash
from mhfgen.kernels.plans import plan_key
from mhfgen.presets import PRESETS
from mhfgen.registry import default_config
from mhfgen.spec import KernelSpec, dtype_name
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.tuning.problem import DeviceFacts
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd

BAR_US = 10.0
KERNEL = "flash_mhf_fwd"
BARE = "bare launch: kernel[grid](...) (JITFunction.run)"
BINARY = "the binary's launcher: CompiledKernel.run(...)"
DISPATCHED = "launcher with dispatch (tuned, exact key)"
_LAUNCHER_MODULE = sys.modules["mhfgen.variants.flash_mhf_fwd"]


def captured_launch(inputs, config):
    """The DirectLaunch of the launcher's plan for `config` (after two calls, so that on a
    GPU it holds its compiled binary) and the output buffer of one call."""
    out = flash_mhf_fwd(*inputs, config=config)
    flash_mhf_fwd(*inputs, config=config)
    plan = _LAUNCHER_MODULE._launch.plans[plan_key(config, *inputs)]
    if plan.splits:
        raise RuntimeError("the benchmark's config must not split the intermediate dimension")
    return plan.launch, out


def compiled_run(launch, tensors):
    """A call of the binary's own launcher, as DirectLaunch makes it (None off a GPU)."""
    c = launch.compiled
    if c is None:
        return None
    g0, g1, g2 = launch.grid
    device, run, tail = launch.device, c.run, launch.tail
    stream = torch._C._cuda_getCurrentRawStream
    return lambda: run(
        g0, g1, g2, stream(device), c.function, c.packed_metadata, None, None, None, *tensors, *tail
    )


def host_us_rows(fns: dict, sync, calls: int, repeats: int) -> dict:
    """Per row: (median, min) over `repeats` of the host microseconds per call of `calls`
    back-to-back calls. The rows take turns within each repeat (round-robin, the order
    rotating), so drift of the host (clock, other processes) spreads over all of them
    instead of falling on whichever row ran during it."""
    for fn in fns.values():
        fn()
    sync()
    samples = {name: [] for name in fns}
    names = list(fns)
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            fn = fns[name]
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            stop = time.perf_counter()
            sync()
            samples[name].append((stop - start) / calls * 1e6)
    return {name: (statistics.median(v), min(v)) for name, v in samples.items()}


def autotuned(fn, kwargs):
    """triton.autotune of `fn` over the plan's config and one variant (2 configs, so
    the autotuner computes its key and looks up its cache on every call)."""
    meta = {k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N")}
    warps = kwargs["num_warps"]
    configs = [
        triton.Config(meta, num_warps=warps, num_stages=kwargs["num_stages"]),
        triton.Config(meta, num_warps=8 if warps == 4 else 4, num_stages=kwargs["num_stages"]),
    ]
    rest = {
        k: v
        for k, v in kwargs.items()
        if k not in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
    }
    return triton.autotune(configs=configs, key=["seqlen", "rows"])(fn), rest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="370M", choices=sorted(PRESETS))
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run the script's logic through Triton's interpreter on a tiny "
        "problem (numbers are meaningless: NOT GPU timings)",
    )
    args = parser.parse_args(argv)

    gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not gpu and not args.cpu_smoke:
        print(
            "dispatch_overhead: needs a CUDA GPU (or --cpu-smoke to check the script)",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        p = PRESETS[args.preset]
        heads, kv, d, e, de, tokens, dtype = (
            p.heads,
            p.heads,
            p.head_dim,
            p.experts,
            p.expert_dim,
            args.tokens,
            getattr(torch, args.dtype),
        )
        sync = torch.cuda.synchronize
    else:
        heads, kv, d, e, de, tokens, dtype = 2, 1, 32, 2, 32, 16, torch.float32
        args.calls, args.repeats = 3, 3
        sync = lambda: None  # noqa: E731
    facts = DeviceFacts.of(device)

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, tokens, heads, d, generator=g).to(device, dtype)
    k, u, v = (
        (torch.randn(kv, e, de, d, generator=g) * d**-0.5).to(device, dtype) for _ in range(3)
    )
    r = torch.softmax(torch.randn(1, tokens, heads, e, generator=g), -1).to(device)
    inputs = (q, k, u, v, r)

    spec = KernelSpec(heads, kv, d, e, de, dtype_name(dtype), facts.target)
    config = dataclasses.replace(
        default_config(KERNEL, spec, tokens, facts.sm_count), inter_splits=1
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MHFGEN_DB"] = os.path.join(tmp, "tuning.sqlite")
        os.environ.pop("MHFGEN_NO_TUNED", None)
        with TuningDB.open(os.environ["MHFGEN_DB"]) as db:
            key = TuningKey.of(
                KERNEL,
                template_hash(KERNEL),
                spec,
                shape_bucket(tokens),
                tokens,
                facts.gpu_name,
                facts.compute_capability,
                triton.__version__,
            )
            db.put_winner(
                WinnerRecord(
                    key,
                    config,
                    1.0,
                    0.0,
                    None,
                    None,
                    "dispatch benchmark",
                    1,
                    mhfgen.__version__,
                    torch.__version__,
                    utc_now(),
                )
            )
        dispatch.clear_cache()
        choice = dispatch.explain_choice(KERNEL, spec, tokens, device)
        if choice.source != "exact" or choice.config != config:
            print(f"warning: dispatch chose {choice} instead of the stored config", file=sys.stderr)

        launch, out = captured_launch(inputs, config)
        fn, grid, kkwargs = launch.kernel, launch.grid, launch.meta
        kargs = (*inputs, out, *launch.args)
        fns = {BARE: lambda: fn[grid](*kargs, **kkwargs)}
        binary = compiled_run(launch, (*inputs, out))
        if binary is not None:
            fns[BINARY] = binary
        fns.update(
            {
                "launcher, explicit config": lambda: flash_mhf_fwd(*inputs, config=config),
                DISPATCHED: lambda: flash_mhf_fwd(*inputs),
                "mhfgen.flash_mhf, no grad (launcher called directly)": lambda: mhfgen.flash_mhf(
                    *inputs
                ),
                "torch.ops.mhfgen.flash_mhf (the custom op's dispatch)": lambda: (
                    torch.ops.mhfgen.flash_mhf(*inputs)
                ),
            }
        )
        if gpu:
            at, rest = autotuned(fn, kkwargs)
            fns["triton.autotune, 2 configs (reference)"] = lambda: at[grid](*kargs, **rest)
        fns["choose_config alone (cached)"] = lambda: dispatch.choose_config(
            KERNEL, spec, tokens, device
        )
        with torch.no_grad():
            stats = host_us_rows(fns, sync, args.calls, args.repeats)
        rows = [(name, med) for name, (med, _) in stats.items()]
        dispatch.clear_cache()

    times = dict(rows)
    bare = times[BARE]
    overhead = times[DISPATCHED] - bare
    lines = [
        f"# Dispatch host overhead ({'GPU' if gpu else 'INTERPRETER SMOKE RUN: NOT GPU timings'})",
        "",
        f"{facts.gpu_name} (compute capability {facts.compute_capability}), torch "
        f"{torch.__version__}, Triton {triton.__version__}, mhfgen {mhfgen.__version__}, "
        f"Python {platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"problem: {spec.key()} at {tokens} tokens, config {config}",
        f"each row: median (and min) of {args.repeats} x {args.calls} back-to-back calls, "
        f"the rows taking turns",
        "",
        "| path | host us / call, median | min | median above bare launch |",
        "|---|---|---|---|",
    ]
    for name, us in rows:
        above = "" if name in (BARE, BINARY) or name.startswith("choose") else f"{us - bare:+.2f}"
        lines.append(f"| {name} | {us:.2f} | {stats[name][1]:.2f} | {above} |")
    verdict = "PASS" if overhead <= BAR_US else "FAIL"
    lines += [
        "",
        f"dispatch overhead = launcher with dispatch - bare launch = {overhead:.2f} us "
        f"(bar <= {BAR_US:g} us): {verdict if gpu else 'n/a on the interpreter'}",
    ]
    if BINARY in times:
        lines.append(
            f"the launcher's own work (plan lookup, output allocation, checks) = "
            f"launcher with dispatch - binary's launcher = "
            f"{times[DISPATCHED] - times[BINARY]:.2f} us"
        )
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "gpu": dataclasses.asdict(facts),
                    "torch": torch.__version__,
                    "triton": triton.__version__,
                    "mhfgen": mhfgen.__version__,
                    "date": utc_now(),
                    "gpu_timings": gpu,
                    "spec": spec.as_dict(),
                    "tokens": tokens,
                    "config": config.as_dict(),
                    "calls": args.calls,
                    "repeats": args.repeats,
                    "rows_us": times,
                    "rows_min_us": {n: m for n, (_, m) in stats.items()},
                    "overhead_us": overhead,
                    "bar_us": BAR_US,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
