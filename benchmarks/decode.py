"""Decode (1 to 64 tokens): weight bandwidth of the forward, against the decode bar of
docs/CONTRACTS.md, section 6.

    python benchmarks/decode.py [--shapes 1.3B,370M,1.3B-kv4] [--tokens 1,8,64] [--json FILE]

With a handful of tokens the forward reads every weight once, 3 * Hkv * I * D elements,
and does little else: it is bound by HBM bandwidth. The figure of merit is weight bytes
read per second against the device's copy bandwidth, measured in the same run (a device
to device copy of 1 GiB, read + write bytes per second; 4.25 TB/s on an
H200, docs/PERFORMANCE.md). The bar: >= 60% on the 1.3B shape at 1, 8 and 64 tokens.

`mhfgen bench --suite decode` (mhfgen/bench_decode.py, whose copy bandwidth and graph
timing this script shares) measures the same with 16-bit and FP8 weights; this script adds
eager calls, torch.compile of the reference and the config sweep.

Per (shape, tokens), under torch.no_grad, with the dispatcher's config (tuned where the
database has the shape, else the heuristic):
  graph    GPU time per call: COPIES calls, each on its own copy of the weights (together
           more than 4x the L2 cache, so no call finds its weights cached), captured in one
           CUDA graph; median replay time / COPIES. What a server that replays graphs sees.
  eager    the same calls launched one by one from Python: host time included when the
           host is slower than the GPU.
and the same two for torch.compile of the PyTorch reference (the naive form).
With --sweep, also a grid of forward launch configs (tile width, pipeline depth,
intermediate splits; 16-row blocks and the heuristic's), CUDA-graph timed the same way, and
on sm90+ the fastest of them again with programmatic dependent launch (`pdl`): how far the
dispatched config is from the best this kernel design reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
from datetime import datetime, timezone

import mhfgen  # first: switches Triton's interpreter on where there is no GPU

# isort: split
import torch
import triton

from mhfgen import device as mdevice
from mhfgen import dispatch, reference
from mhfgen.bench_decode import copy_bandwidth
from mhfgen.graph_timing import call_ms, rotation_copies
from mhfgen.presets import shape
from mhfgen.spec import KernelSpec
from mhfgen.tuning.search import describe_config

BAR = 0.60


@dataclasses.dataclass
class _Problem:
    """One (preset, tokens) decode problem in bf16: q and r, `copies` sets of weights
    (mhfgen.graph_timing.rotation_copies), the weight bytes one call reads, and the KernelSpec."""

    name: str
    tokens: int
    spec: KernelSpec
    q: torch.Tensor
    r: torch.Tensor
    weights: list
    weight_bytes: int

    @property
    def copies(self) -> int:
        return len(self.weights)


def shape_heads(name: str) -> tuple[object, int]:
    """(preset, kv heads) of a shape name (mhfgen.presets.shape: a preset, or one with
    '-kv<N>' appended for N kv heads). Raises ValueError naming the valid forms."""
    preset = shape(name)
    return preset, preset.kv_heads


def _problem(preset_name: str, tokens: int, device) -> _Problem:
    preset, Hkv = shape_heads(preset_name)
    H, D = preset.heads, preset.head_dim
    E, De = preset.experts, preset.intermediate // preset.experts
    weight_bytes = 3 * Hkv * E * De * D * 2
    copies = rotation_copies(weight_bytes)
    gen = torch.Generator(device="cpu").manual_seed(tokens)
    q = torch.randn(1, tokens, H, D, generator=gen).to(device, torch.bfloat16)
    r = torch.softmax(torch.randn(1, tokens, H, E, generator=gen), -1).to(device)
    weights = [
        tuple(
            (torch.randn(Hkv, E, De, D, generator=gen) * 0.05).to(device, torch.bfloat16)
            for _ in range(3)
        )
        for _ in range(copies)
    ]
    spec = KernelSpec(H, Hkv, D, E, De, "bfloat16", mdevice.target(device))
    return _Problem(preset_name, tokens, spec, q, r, weights, weight_bytes)


def _row(p: _Problem, method: str, mode: str, ms: float, copy_bps: float, config: str) -> dict:
    bps = p.weight_bytes / (ms * 1e-3)
    return dict(
        shape=p.name,
        tokens=p.tokens,
        method=method,
        mode=mode,
        us=round(ms * 1e3, 2),
        weight_bytes=p.weight_bytes,
        tb_per_s=round(bps / 1e12, 3),
        of_copy=round(bps / copy_bps, 3),
        config=config,
    )


def _time(calls, graph: bool, replays: int = 20) -> float:
    """Median ms of running every call of `calls` once (in a CUDA graph, the round repeated
    to at least 32 calls a replay, mhfgen.graph_timing.call_ms; or eagerly)."""
    if graph:
        return call_ms(calls, replays) * len(calls)
    for fn in calls:  # compile and warm up
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for fn in calls:
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(preset_name: str, tokens: int, device, copy_bps: float) -> list[dict]:
    p = _problem(preset_name, tokens, device)
    choice = dispatch.explain_choice("flash_mhf_fwd", p.spec, tokens, device)
    chosen = f"{describe_config(choice.config)} ({choice.source})"
    torch._dynamo.reset()  # static shapes per (shape, tokens), as a server compiles them
    compiled = torch.compile(reference.flash_mhf, dynamic=False)
    rows = []
    for method, op in (("mhfgen", mhfgen.flash_mhf), ("torch_compile", compiled)):
        calls = [lambda k=k, u=u, v=v, op=op: op(p.q, k, u, v, p.r) for (k, u, v) in p.weights]
        for mode in ("graph", "eager"):
            with torch.no_grad():
                ms = _time(calls, mode == "graph") / p.copies
            rows.append(_row(p, method, mode, ms, copy_bps, chosen if method == "mhfgen" else ""))
    return rows


def sweep_grid(base, fp8: bool) -> list:
    """The sweep's configs around the heuristic's `base`: with more rows than one 16-row
    block, 16-row, `base`-row and 64-row blocks, wide tiles and few splits; else 16-row blocks,
    32 to 128-column tiles, 8 to 44 splits, and two TMA configs; every one with and
    without the split reduction's unrolled loads (ru8)."""
    fields = ("block_m", "block_n", "num_stages", "inter_splits", "num_warps", "tma")
    if base.block_m > 16 or base.inter_splits <= 4:  # more than one 16-row block
        grid = [
            (bm, bn, 3, sp, w, False)
            for bm in sorted({16, base.block_m, 64})
            for bn in ((32, 64) if fp8 else (64, 128))
            for sp in (4, 8, 16)
            for w in ((4,) if bm == 16 else (4, 8))
        ]
    else:
        grid = [
            (16, bn, st, sp, 4, False)
            for bn in (32, 64, 128)
            for st in (3, 4)
            for sp in (8, 16, 32, 44)
        ]
        grid += [(16, 64, 4, sp, 4, True) for sp in (16, 32)]
    return [
        dataclasses.replace(base, **dict(zip(fields, values)), reduce_unroll=ru)
        for values in grid
        for ru in (1, 8)
    ]


def sweep(
    preset_name: str, tokens: int, device, copy_bps: float, fp8: bool = False, top: int = 6
) -> list[dict]:
    """CUDA-graph time of a grid of forward configs (sweep_grid), with 16-bit or FP8
    weights; the `top` fastest, best first."""
    from mhfgen.fp8 import quantize_experts
    from mhfgen.registry import default_config
    from mhfgen.spec import pdl_target
    from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd

    p = _problem(preset_name, tokens, device)
    spec = p.spec
    if fp8:  # the same weights in FP8: k8, u8, v8 and their stacked scales
        weights = [quantize_experts(*w) for w in p.weights]
        spec = dataclasses.replace(spec, dtype="bfloat16_e4m3")
        nbytes = p.weight_bytes // 2 + 3 * spec.kv_heads * spec.intermediate * 4
        p = dataclasses.replace(p, weights=weights, weight_bytes=nbytes, spec=spec)
    base = default_config("flash_mhf_fwd", spec, tokens, mdevice.sm_count(device))

    def timed(config) -> float | None:
        calls = [
            lambda w=w, c=config: flash_mhf_fwd(p.q, *w[:3], p.r, *w[3:], config=c)
            for w in p.weights
        ]
        try:
            with torch.no_grad():
                return _time(calls, True, replays=10) / p.copies
        except Exception as exc:  # noqa: BLE001 - out of resources etc.: skip the config
            print(f"  {describe_config(config)}: {type(exc).__name__}", flush=True)
            return None

    times = [(ms, c) for c in sweep_grid(base, fp8) if (ms := timed(c)) is not None]
    times.sort(key=lambda t: t[0])
    if pdl_target(spec.target):  # the fastest again with programmatic dependent launch
        pdl = [dataclasses.replace(c, pdl=True) for _, c in times[:top]]
        times += [(ms, c) for c in pdl if (ms := timed(c)) is not None]
        times.sort(key=lambda t: t[0])
    return [_row(p, "sweep", "graph", ms, copy_bps, describe_config(c)) for ms, c in times[:top]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--shapes",
        default="1.3B,370M",
        help="comma list of presets, each optionally with -kv<N> for N kv heads (1.3B-kv4)",
    )
    ap.add_argument("--tokens", default="1,8,64", help="comma list of token counts")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument(
        "--sweep",
        default="",
        help="comma list of token counts whose forward "
        "configs are swept on the first shape (e.g. 1,64)",
    )
    ap.add_argument(
        "--sweep-weights",
        default="dense",
        help="comma list of dense (bf16) and fp8 (e4m3 with row scales): the weights each "
        "sweep runs on (default dense)",
    )
    args = ap.parse_args(argv)
    for name in args.shapes.split(","):
        try:
            shape_heads(name)
        except ValueError as exc:
            ap.error(f"--shapes: {exc}")
    if not torch.cuda.is_available():
        print("decode: needs a CUDA GPU (timing CUDA graphs)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    copy_bps = copy_bandwidth(device)
    header = (
        f"decode bench on {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
        f"triton {triton.__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"copy bandwidth measured now: {copy_bps / 1e12:.2f} TB/s (read + write); "
        f"bar: weight bytes/s >= {BAR:.0%} of it on 1.3B at 1, 8, 64 tokens"
    )
    print(header, flush=True)
    rows = []
    print(
        f"{'shape':6} {'T':>3} {'method':13} {'mode':5} {'us':>8} {'TB/s':>6} {'of copy':>7}  config"
    )
    for name in args.shapes.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            for row in measure(name, tokens, device, copy_bps):
                rows.append(row)
                print(
                    f"{row['shape']:6} {row['tokens']:>3} {row['method']:13} {row['mode']:5} "
                    f"{row['us']:>8.1f} {row['tb_per_s']:>6.2f} {row['of_copy']:>7.1%}  "
                    f"{row['config']}",
                    flush=True,
                )
    sweeps = [
        (int(t), w)
        for t in filter(None, args.sweep.split(","))
        for w in filter(None, args.sweep_weights.split(","))
    ]
    for tokens, weights in sweeps:
        if weights not in ("dense", "fp8"):
            print(f"decode: --sweep-weights: unknown {weights!r} (dense, fp8)", file=sys.stderr)
            return 2
        name = args.shapes.split(",")[0]
        print(
            f"sweep of forward configs, {name}, {tokens} tokens, {weights} weights "
            "(CUDA graph), fastest first:",
            flush=True,
        )
        for row in sweep(name, tokens, device, copy_bps, fp8=weights == "fp8"):
            rows.append(row)
            print(
                f"{row['shape']:6} {row['tokens']:>3} {'sweep':13} {'graph':5} "
                f"{row['us']:>8.1f} {row['tb_per_s']:>6.2f} {row['of_copy']:>7.1%}  "
                f"{row['config']}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(
                    header=header,
                    copy_tb_per_s=copy_bps / 1e12,
                    python=platform.python_version(),
                    rows=rows,
                ),
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
