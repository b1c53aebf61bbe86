"""flash_mhf_fwd_ws: the warp-specialised Gluon forward for Hopper
(flash_mhf_fwd_ws.py.jinja).

A one-warp TMA producer feeds a K/U/V ring; one or two consumer warpgroups issue async
wgmma. sm90 only, bf16/fp16, head_dim a multiple of 16 up to 128; calls of fewer than
MIN_TOKENS tokens are left to flash_mhf_fwd (its split-intermediate decode path). Where
it supports a call it is the op's preferred variant: the dispatcher's heuristic fallback
picks it before flash_mhf_fwd (tuned winners of either still come first).

Its config's fields: see WsConfig. Resources:
shared memory = consumers' Q tiles + stages * 3 K/U/V tiles + mbarriers + 1 KiB;
registers = BLOCK_M * (D + 4 * BLOCK_N) / (32 * consumer_warps) accumulator values per
consumer thread (O, S, G and the next tile's S, G).

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher, sm90 compile check and registry entry; its template and search space
sit beside it.

The same op as flash_mhf_fwd, another schedule: a one-warp producer partition streams the
K/U/V tiles of a kv head by TMA into a shared-memory ring guarded by mbarriers; one or two
consumer partitions (warpgroups of 4 or 8 warps, 16 rows per warp) issue asynchronous wgmma
for S = Q K^T and G = Q U^T of tile j+1 before the element-wise activation of tile j, then
O += p_j V_j, with O accumulated in fp32 registers. Two consumers share every weight tile
(two token blocks of one head, or two heads of a kv group) and may take turns issuing their
GEMMs (ping-pong), so one's activation math hides under the other's tensor-core work.

Tensor layouts the kernel reads through TMA descriptors:
    q, o  (B, L, H, D) viewed as (B * L, H * D), blocks (BLOCK_M, D) at [t0, head * D]
    k/u/v (Hkv, E, De, D) viewed as (Hkv * E * De, D), blocks (BLOCK_N, D)
    r     (B, L, H, E), read with plain loads, any strides
A q whose (B, L) dims do not collapse into one stride, or whose heads are not D apart, is
copied to a contiguous tensor first (q from x @ W_in^T never is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import codegen
from .. import device as _device
from ..kernels import sm90
from ..kernels.buffers import empty
from ..kernels.launch import Tma, host_descriptors
from ..kernels.plans import CachedLaunch
from ..registry import register
from ..spec import KernelSpec, dtype_name
from ..tiling import Chunk, even_tiles, head_dim_chunks
from ..validation import check_flash_mhf_inputs
from . import _gluon

KERNEL = "flash_mhf_fwd_ws"
TEMPLATE = f"{KERNEL}.py.jinja"
#: query heads x tokens below which the variant is not meant to run (decode stays on the
#: Triton-language kernel, whose split-intermediate path fills the GPU with few rows)
MIN_TOKENS = 65
DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class WsConfig(_gluon.ForwardConsumersConfig):
    """Launch parameters of flash_mhf_fwd_ws (its registry config type, see
    mhfgen.variants.flash_mhf_fwd_ws).

    block_n:        intermediate columns per weight tile (the ring slot's rows).
    stages:         slots of the K/U/V ring (>= 3: V of tile j is read while tile j+1's
                    GEMMs are issued and tile j+2 loads).
    consumers:      consumer partitions sharing each weight tile (1, 2 or 3). Three fit
                    the SM's registers at consumer_regs = 160 with 4-warp consumers and
                    few accumulators (D <= 96 with 32-column tiles); they are correct
                    but were 0.80-0.95x two consumers' speed on an H100, so the search
                    space leaves them out (docs/PERFORMANCE.md).
    consumer_warps: warps per consumer (4 = one warpgroup, 64 rows; 8 = two, 128 rows).
    group_heads:    query heads of one kv group among a program's consumers (divides
                    consumers and H / Hkv); the others take further token blocks.
    pingpong:       two consumers take turns issuing their GEMMs (needs consumers = 2).
    sigmoid:        'tanh' (one tanh.approx per element) or 'exp' (exp2 + fast divide).
    persistent:     one program per SM walking the work tiles, instead of one per tile.
                    Disabled (config_problems rejects it, so stored winners with it give
                    way to the heuristic): wrong outputs on small shapes on the H200.
    joint_scores:   S and G by one wgmma chain of twice the width, [S | G] = q [K; U]^T
                    (K and U of a weight tile stacked in one ring tile): q is read from
                    shared memory once for both, not twice (block_n <= 128; a head_dim
                    of one chunk: at D = 96 it gave inf outputs); 1.05x on 370M and
                    1.06x on 1.3B, neutral at D = 64 on an H200 (docs/PERFORMANCE.md).
    producer_regs, consumer_regs: registers per thread of the producer and of the second
                    consumer partition (setmaxnreg); the first consumer gets what is left.
    unroll_tiles:   weight tiles per iteration of a consumer's loop (1 or 2). With 2 the
                    registers of the pending S and G alternate between the two tiles; with
                    1 ptxas copies them into the loop-carried registers every tile (one
                    move per score element).
    """

    variant = KERNEL

    block_n: int = 64
    stages: int = 4
    consumers: int = 2
    consumer_warps: int = 4
    group_heads: int = 1
    pingpong: bool = False
    sigmoid: str = "tanh"
    persistent: bool = False
    joint_scores: bool = False
    producer_regs: int = 24
    consumer_regs: int = 240
    unroll_tiles: int = 1

    #: fields added after configs of this variant were stored: a stored or imported config
    #: without them means these values (whose generated code is the code it was tuned with)
    added_fields = {"joint_scores": False, "unroll_tiles": 1}
    describe_flags = (
        ("pingpong", "pingpong"),
        ("persistent", "persistent"),
        ("joint_scores", "joint"),
    )

    choices = dict(
        block_n=(16, 32, 64, 128, 256),
        stages=range(3, 9),
        consumers=(1, 2, 3),
        consumer_warps=(4, 8),
        group_heads=(1, 2),
        unroll_tiles=(1, 2),
    )


# ---------------------------------------------------------------------------------------
# what the variant supports, and what a config needs
# ---------------------------------------------------------------------------------------


def unsupported(spec: KernelSpec, tokens: int | None = None) -> str | None:
    """Why flash_mhf_fwd_ws cannot run `spec` (at `tokens`), or None when it can."""
    if not spec.target.startswith("sm9"):
        return f"Gluon wgmma kernel for sm90 (Hopper); target is {spec.target}"
    if spec.dtype not in DTYPES:
        return f"bf16/fp16 only (wgmma with fp32 accumulation); dtype is {spec.dtype}"
    if spec.head_dim % 16 or spec.head_dim > 128:
        return f"head_dim must be a multiple of 16 up to 128; it is {spec.head_dim}"
    if tokens is not None and tokens < MIN_TOKENS:
        return f"decode-sized calls ({tokens} tokens) stay on flash_mhf_fwd"
    return None


def config_problems(spec: KernelSpec, config: WsConfig) -> list[str]:
    """Why `config` cannot run `spec` (empty when it can): head grouping, shared memory,
    registers."""
    problems = []
    if spec.group % config.group_heads:
        problems.append(f"group_heads={config.group_heads} must divide H/Hkv={spec.group}")
    if config.persistent:
        problems.append(
            "persistent=True is disabled: on the H200 it gave wrong outputs on "
            "shapes of 48 and 80 work tiles (one per program, where its code "
            "path should match the full grid's), with and without joint_scores; "
            "docs/PERFORMANCE.md"
        )
    if config.joint_scores and len(head_dim_chunks(spec.head_dim, "chunks")) > 1:
        problems.append(
            f"joint_scores needs a head_dim of one chunk (64 or 128): at D = 96 "
            f"(64 + 32) it gave inf outputs on the H200 (128M, fp16, 16384 "
            f"tokens; docs/PERFORMANCE.md); head_dim is {spec.head_dim}"
        )
    problems += _gluon.forward_resource_problems(spec, config, shared_memory(spec, config))
    return problems


#: bytes kept for the compiler's own shared-memory use beside the buffers the kernel
#: allocates (alignment, barrier padding: 180-376 bytes seen on the test table)
SCRATCH_RESERVE = 1024


def shared_memory(spec: KernelSpec, config: WsConfig) -> int:
    """Bytes: the consumers' Q tiles (reused for O) plus STAGES slots of K, U and V tiles,
    plus the mbarriers, plus SCRATCH_RESERVE."""
    itemsize = 2
    q = config.consumers * config.block_m * spec.head_dim * itemsize
    ring = config.stages * 3 * config.block_n * spec.head_dim * itemsize
    return q + ring + 8 * (3 * config.stages + 2 * config.consumers + 2) + SCRATCH_RESERVE


#: fp32 accumulator values per consumer thread; the launch's register cap
registers = _gluon.forward_registers
max_registers = _gluon.forward_max_registers


def default_config(spec: KernelSpec, tokens: int, sm_count: int = 0) -> WsConfig:
    """The built-in config, from sweeps on an H200 (docs/PERFORMANCE.md): two 4-warp consumers sharing 64-column tiles through a 4-slot
    ring, tanh silu, S and G from one joint wgmma chain (688 TFLOP/s on the 1.3B shape, 680
    on 370M, 482 at D = 64, 532 at D = 96); the next shallower ring, then 32-column tiles,
    where that does not fit. The two consumers take two token blocks of one head
    (group_heads = 2, two heads of a kv group, is the tuner's to try). At D <= 64 two
    weight tiles per loop iteration (unroll_tiles; on an H100 1.06x at D = 64, 0.93-0.99x
    at D = 128 where the wgmma, not the issue slots, set the pace). The SM count does not
    enter it.
    """
    unroll = 2 if spec.head_dim <= 64 else 1
    for block_n, stages in ((64, 4), (64, 3), (32, 4), (32, 3)):
        for joint in (True, False):  # joint where the head_dim is one chunk (not D = 96)
            candidate = WsConfig(
                block_n=block_n,
                stages=stages,
                consumers=2,
                consumer_warps=4,
                joint_scores=joint,
                unroll_tiles=unroll,
            )
            if not config_problems(spec, candidate):
                return candidate
    return WsConfig(block_n=16, stages=3, consumers=2, consumer_warps=4, unroll_tiles=unroll)


# ---------------------------------------------------------------------------------------
# code generation
# ---------------------------------------------------------------------------------------


def static_params(spec: KernelSpec, config: WsConfig) -> dict:
    """The parts of (spec, config) that change the generated code's structure."""
    chunks = tuple(
        Chunk(i, off, width, masked)
        for i, (off, width, masked) in enumerate(head_dim_chunks(spec.head_dim, "chunks"))
    )
    return {
        "chunks": chunks,
        "even_de": even_tiles(spec, config.block_n),
        "consumers": config.consumers,
        "group_heads": config.group_heads,
        "pingpong": config.pingpong,
        "sigmoid": config.sigmoid,
        "persistent": config.persistent,
        **({"joint_scores": True} if config.joint_scores else {}),
        **({"unroll_tiles": 2} if config.unroll_tiles == 2 else {}),
    }


def template_hash() -> str:
    """sha256 (16 hex digits) of the template (mhfgen.codegen.template_hash)."""
    return codegen.template_hash(KERNEL)


def render(spec: KernelSpec, config: WsConfig) -> str:
    """The generated Gluon source for `spec` and `config` (mhfgen.codegen.render: the
    codegen path every variant takes)."""
    return codegen.render(KERNEL, spec, config)


def load_kernel(spec: KernelSpec, config: WsConfig):
    """Render (or reuse) and import the generated module (a content-hash file, as for
    every variant: mhfgen.codegen.load_kernel); its @gluon.jit kernel."""
    return codegen.load_kernel(KERNEL, spec, config)


def descriptor_layouts(spec: KernelSpec, config: WsConfig) -> tuple:
    """(block shape, NVMMASharedLayout) of every TMA descriptor the kernel takes, in its
    argument order: for each of q, k, u, v, o one per head_dim chunk (D = 96 -> widths 64,
    32)."""
    widths = [width for _, width, _ in head_dim_chunks(spec.head_dim, "chunks")]
    return tuple(
        sm90.nvmma_block(spec, rows, width)
        for rows in (config.block_m, config.block_n, config.block_n, config.block_n, config.block_m)
        for width in widths
    )


def descriptors(layouts: tuple, q2, k2, u2, v2, o2) -> list:
    """The TMA operands (kernels.launch.Tma) over the 2-D views (see the module docstring),
    one per entry of `layouts` (descriptor_layouts)."""
    views = (q2, k2, u2, v2, o2)
    per_tensor = len(layouts) // len(views)
    return [Tma(views[i // per_tensor], *layout) for i, layout in enumerate(layouts)]


#: the kernel's constexprs and launch options (_gluon: shared by the warp-specialised forwards)
constexprs = _gluon.forward_constexprs
launch_options = _gluon.forward_launch_options


# ---------------------------------------------------------------------------------------
# the launcher
# ---------------------------------------------------------------------------------------


#: a call signature's plan: spec, config, kernel, grid, layouts, scalars, meta, launch
WsPlan = _gluon.ForwardPlan


def flash_mhf_fwd_ws(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, config: WsConfig | None = None
) -> Tensor:
    """o = FlashMHF(q, k, u, v, r) through the warp-specialised Gluon kernel (sm90).

    q: (B, L, H, D) with unit last stride; k/u/v: (Hkv, E, De, D); r: (B, L, H, E) fp32 or
    q's dtype (converted to fp32 first: routing_fp32). Returns o (B, L, H, D), contiguous, in q's dtype. ValueError where the
    variant does not support the problem (see `unsupported`) or `config` cannot run it.
    The checks, the config and the compiled kernel are cached per call signature (shapes,
    strides, dtypes, device, config), and the first call goes through first_launch, as in
    the Triton-language launchers (a tuned config that fails there gives way to the
    heuristic).
    """
    return _launch(q, k, u, v, sm90.routing_fp32(r), config=config)


def _run(plan: WsPlan, q, k, u, v, r) -> torch.Tensor:
    """Allocate o and launch: the per-call part."""
    o = empty(q.shape, q.dtype, q.device)
    if plan.kernel is None:
        return o
    plan.launch.launch_all(arguments(plan, q, k, u, v, r, o))
    return o


def arguments(plan: WsPlan, q, k, u, v, r, o) -> tuple:
    """The kernel's positional arguments for one call: the TMA descriptors of q, k, u, v
    and o (one per head_dim chunk each, over the 2-D views of the module doc), r, then the
    plan's scalars; the constexprs and launch options are plan.meta."""
    B, L, H, D = q.shape
    descs = descriptors(
        plan.layouts,
        sm90.rows_view(q),
        *(w.contiguous().view(-1, D) for w in (k, u, v)),
        o.view(-1, H * D),
    )
    return (*descs, r, *plan.scalars)


def _make_plan(q, k, u, v, r, config) -> WsPlan:
    """Check the inputs, choose and check the config, load the kernel: all but the launch."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    B, L, H, D = q.shape
    Hkv, E, De, _ = k.shape
    spec = KernelSpec(H, Hkv, D, E, De, dtype_name(q.dtype), _device.target(q.device))
    config = _gluon.checked_config(KERNEL, unsupported, config_problems, spec, problem, q, config)
    tokens = B * L
    if tokens == 0:
        return WsPlan.without_tokens(spec, config)
    tiles = work_tiles(spec, config, tokens)
    grid = (min(tiles, _device.sm_count(q.device)) if config.persistent else tiles,)
    return WsPlan.of(
        spec,
        config,
        load_kernel(spec, config),
        grid,
        descriptor_layouts(spec, config),
        (*r.stride(), L, tokens, tiles),
        {**constexprs(config), **launch_options(config)},
    )


#: programs of a call, one work tile each (_gluon.forward_work_tiles)
work_tiles = _gluon.forward_work_tiles


# ---------------------------------------------------------------------------------------
# compiling for sm90 without a GPU (tests, CI)
# ---------------------------------------------------------------------------------------


def compile_sm90(spec: KernelSpec, config: WsConfig) -> sm90.CompileReport:
    """Compile the generated kernel for sm90 down to cubin on any machine (no GPU needed):
    the signature is built from host descriptors over small CPU tensors."""
    tdtype = spec.torch_dtype
    D = spec.head_dim
    rows = max(config.block_m, 16)
    q2 = torch.empty(rows, spec.heads * D, dtype=tdtype)
    w2 = torch.empty(spec.kv_heads * spec.intermediate, D, dtype=tdtype)
    descs = host_descriptors(descriptors(descriptor_layouts(spec, config), q2, w2, w2, w2, q2))
    r = torch.empty(1, dtype=torch.float32)
    n = len(descs) // 5
    names = [f"{t}_desc{i}" for t in ("q", "k", "u", "v", "o") for i in range(n)]
    args = dict(
        zip(names, descs),
        R=r,
        stride_rb=1 << 20,
        stride_rl=1 << 12,
        stride_rh=64,
        stride_re=1,
        seqlen=1024,
        tokens=1 << 16,
        n_tiles=1 << 12,
    )
    return sm90.compile_gluon(
        load_kernel(spec, config), args, constexprs(config), launch_options(config)
    )


_launch = CachedLaunch(KERNEL, _make_plan, _run)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfFwdWs(_gluon.GluonVariant):
    stem = "flash_mhf_fwd_ws"
    op = "fwd"
    Config = WsConfig
    flop_factor = 6
    outputs = ("o",)
    model = _gluon.GluonModel(
        unsupported, config_problems, shared_memory, registers, default_config
    )

    def static_params(self, spec: KernelSpec, config: WsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfFwdWs())
