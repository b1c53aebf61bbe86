"""The decode suite of `mhfgen bench` (`--suite decode`): the forward at 1 to 64 tokens,
as a share of the GPU's copy bandwidth, with 16-bit and with FP8 expert weights.

With a handful of tokens the forward reads every expert weight once, 3 * Hkv * I * D
elements (2 bytes each in bf16/fp16; 1 byte plus a float32 scale per row in FP8), and
does little else: it is bound by HBM bandwidth. The figure of merit is weight bytes read
per second against the device's copy bandwidth measured in the same run (a 1 GiB
device-to-device copy, read + write bytes per second).

Per (tokens, weights), under torch.no_grad, with the dispatcher's variant and config:
COPIES calls, each on its own copy of the weights (mhfgen.graph_timing.rotation_copies:
together over 4x a Hopper L2, so no call finds its weights cached), that round repeated
to at least 32 calls and captured in one CUDA graph (mhfgen.graph_timing.call_ms); the
median replay time over its calls is a call's time, what a server replaying a graph of
a model's layers sees.
`speedup` is the 16-bit row's time over this row's at the same token count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from .graph_timing import call_ms, rotation_copies
from .spec import KernelSpec

#: the weight formats: "dense" (q's dtype) and "fp8" (e4m3 with a scale per row)
WEIGHTS = ("dense", "fp8")
DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class DecodeRow:
    """One measured (tokens, weights) point of the decode suite."""

    shape: str
    tokens: int
    weights: str
    us: float  # GPU time per call, CUDA graph
    weight_bytes: int  # what one call must read
    tb_per_s: float  # weight_bytes per second
    of_copy: float  # tb_per_s over the copy bandwidth of the same run
    speedup: float | None  # the dense row's time over this one's (same tokens)
    config: str  # the dispatcher's variant and config


def copy_bandwidth(device) -> float:
    """Bytes (read + write) per second of a 1 GiB device-to-device copy, median of 20."""
    import triton

    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def weight_bytes(spec: KernelSpec, weights: str) -> int:
    """Bytes of K, U and V one forward reads: 16-bit elements, or FP8 elements and a
    float32 scale per row."""
    rows = 3 * spec.kv_heads * spec.intermediate
    if weights == "fp8":
        return rows * spec.head_dim + rows * 4
    return rows * spec.head_dim * spec.torch_dtype.itemsize


def weight_copies(spec: KernelSpec, weights: str, device, copies: int) -> list[tuple]:
    """`copies` independent sets of launcher weight arguments: (k, u, v) in q's dtype, or
    (k8, u8, v8, scales) (mhfgen.fp8.quantize_experts), of N(0, 0.05^2) values."""
    from .fp8 import quantize_experts

    shape = (spec.kv_heads, spec.experts, spec.expert_dim, spec.head_dim)
    out = []
    for _ in range(copies):
        k, u, v = (torch.randn(shape, device=device).mul_(0.05).to(spec.torch_dtype) for _ in "kuv")
        out.append(quantize_experts(k, u, v) if weights == "fp8" else (k, u, v))
    return out


def measure(
    name: str, spec: KernelSpec, tokens: int, weights: str, device, copy_bps: float
) -> DecodeRow:
    """The graph-timed forward of `tokens` tokens with `weights` weights (module doc)."""
    from . import dispatch
    from .ops import flash_mhf, flash_mhf_fp8
    from .spec import dtype_name
    from .tuning.search import describe_config

    nbytes = weight_bytes(spec, weights)
    copies = rotation_copies(nbytes)
    gen = torch.Generator(device="cpu").manual_seed(tokens)
    q = torch.randn(1, tokens, spec.heads, spec.head_dim, generator=gen).to(
        device, spec.torch_dtype
    )
    r = torch.softmax(torch.randn(1, tokens, spec.heads, spec.experts, generator=gen), -1).to(
        device
    )
    sets = weight_copies(spec, weights, device, copies)
    op = flash_mhf_fp8 if weights == "fp8" else flash_mhf
    calls = [lambda w=w: op(q, *w[:3], r, *w[3:]) for w in sets]
    with torch.no_grad():
        ms = call_ms(calls)
    wdtype = sets[0][0].dtype
    key_spec = KernelSpec(**{**spec.as_dict(), "dtype": dtype_name(spec.torch_dtype, wdtype)})
    choice = dispatch.explain_choice("fwd", key_spec, tokens, device)
    bps = nbytes / (ms * 1e-3)
    return DecodeRow(
        name,
        tokens,
        weights,
        round(ms * 1e3, 2),
        nbytes,
        round(bps / 1e12, 3),
        round(bps / copy_bps, 3),
        None,
        f"{choice.variant} {describe_config(choice.config)} ({choice.source})",
    )


def run_decode(
    name: str,
    spec: KernelSpec,
    tokens: Sequence[int],
    weights: Sequence[str],
    device,
    copy_bps: float,
    on_row: Callable[[DecodeRow], None] | None = None,
) -> list[DecodeRow]:
    """Every (tokens, weights) point, with each FP8 row's speed-up over the dense row of
    its token count where both were measured."""
    rows: list[DecodeRow] = []
    for t in tokens:
        dense = None
        for w in weights:
            row = measure(name, spec, t, w, device, copy_bps)
            if w == "dense":
                dense = row
            elif dense is not None:
                row = DecodeRow(**{**asdict(row), "speedup": round(dense.us / row.us, 2)})
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def format_row(row: DecodeRow) -> str:
    speedup = f"{row.speedup:.2f}x" if row.speedup is not None else "-"
    return (
        f"{row.shape:10} {row.tokens:>4} {row.weights:6} {row.us:>9.1f} {row.tb_per_s:>7.2f} "
        f"{row.of_copy:>8.1%} {speedup:>8}  {row.config}"
    )


HEADER = (
    f"{'shape':10} {'T':>4} {'weights':6} {'us/call':>9} {'TB/s':>7} {'of copy':>8} "
    f"{'vs dense':>8}  config"
)
