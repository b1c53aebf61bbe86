"""flash_mhf_fwd: the Triton-language forward (flash_mhf_fwd.py.jinja).

Config fields beyond the tiles (mhfgen.variants._triton):
    group_heads:  query heads of one kv-head group that share a program, so each K/U/V
                  tile is loaded once for all of them (must divide H / Hkv).
    inter_splits: programs that split the intermediate dimension; their fp32 partials
                  are summed in the same launch by the last program of each row block to
                  finish (the decode path for few tokens).
    tma:          load K/U/V tiles through tensor descriptors (the TMA engine, sm90+).
    prefetch_scores: when BLOCK_N divides De: issue the next tile's score MMAs before this
                  tile's activation (software pipelining by hand).
    warp_specialize: with tma and BLOCK_N dividing De (the flat loop): Triton's automatic
                  warp specialisation of the loop, sm90+ only.
    unroll:       the intermediate loop through tl.range(..., loop_unroll_factor=unroll)
                  (1: Python's range, the code every config had before the knob).
    evict_weights: K/U/V pointer loads with eviction_policy="evict_last" (every program of
                  a kv head streams the same tiles; TMA loads are left as they are).
    reduce_unroll: with inter_splits, the last program of a row block issues the loads of
                  this many partial sums together before adding them (in split order:
                  the same result), instead of one round trip to L2 per split (1).
    store_reset:  with inter_splits, the last program of a row block resets its ticket
                  counter with a plain store (True) instead of an acq_rel atomic exchange
                  (False, the code of configs stored before the field), whose release
                  fence waited for the output's stores: the next launch is ordered after
                  this one anyway. 0.4-1.0 us less per decode call on an H100
                  (docs/PERFORMANCE.md, "The split reduction's tail").
    pdl:          programmatic dependent launch (sm90+): the launch may overlap the end of
                  the previous kernel in the stream; until that kernel has finished, each
                  program only prefetches its first num_stages * BLOCK_N rows of K, U and V
                  into L2 (see pdl_params), then waits (griddepcontrol.wait); it signals
                  launch_dependents once its weight loop is done, so the next kernel's
                  launch overlaps the split reduction, not the weight stream.
    unroll and evict_weights are the knobs of Helion's autotuned forward that this kernel
    lacked; the tuner measures whether they pay per problem (docs/PERFORMANCE.md,
    "Triton-language forward": unroll paid 1.09x in fp32 at 2048 tokens on an H200).

Shared memory (fitted to Triton 3.6 on sm90, H200, bf16; docs/PERFORMANCE.md), with Dp the
head_dim padded to its dot chunks and b the element size:
    (num_stages * 3 * BLOCK_N + BLOCK_M) * Dp * b        (K/U/V ring + q)
    + BLOCK_M * BLOCK_N * b in fp32 (IEEE dots stage P in shared memory) + 1 KiB.
Registers: (BM*Dp + 2*BM*BN) / (32 * num_warps) fp32 values per thread live (the
accumulator, S and A tiles).

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher (check, allocate, launch: a plan per call signature) and registry entry;
its template and search space sit beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from ..codegen import load_kernel
from ..kernels.buffers import (
    contiguous_strides,
    empty,
    ensure_descriptor_allocator,
    split_counters,
    weights_need_copy,
)
from ..kernels.configs import checked_call, resolve_config
from ..kernels.launch import DirectLaunch
from ..kernels.plans import CachedLaunch
from ..registry import register
from ..spec import DTYPES, FP8_WEIGHT_DTYPES, INTERPRETER, KernelSpec, fp8_target, pdl_target
from ..tiling import cdiv, even_splits, even_tiles, pow2_ceil, split_units
from ..validation import INT32_LIMIT, check_weight_scales
from . import _triton

KERNEL = "flash_mhf_fwd"


@dataclass(frozen=True)
class FwdPlan:
    """What a call's signature decides, computed once: the compiled kernel, the grid, the
    output shape, the intermediate splits and the launch's scalar arguments."""

    launch: DirectLaunch | None  # the generated kernel's launch; None when there are no tokens
    out_shape: tuple  # (B, L, H, D)
    splits: int  # 0: no split; >= 1: fp32 partials (splits, B, L, H, D) reduced in-launch
    blocks: int  # programs over rows x head groups: one split counter each
    copy_weights: bool  # k/u/v need a contiguous copy


def flash_mhf_fwd(
    q: Tensor,
    k: Tensor,
    u: Tensor,
    v: Tensor,
    r: Tensor,
    scales: Tensor | None = None,
    *,
    config=None,
) -> Tensor:
    """o = FlashMHF(q, k, u, v, r) through the generated forward kernel.

    q: (B, L, H, D) with unit last stride; k/u/v: (Hkv, E, De, D); r: (B, L, H, E) fp32 or
    q's dtype. Returns o (B, L, H, D), contiguous, in q's dtype. `config` overrides the
    dispatcher's choice. With inter_splits = S > 1, S programs share a row block's
    intermediate dimension and write fp32 partials to a workspace (S, B, L, H, D); the last
    of them to finish sums the S partials into o, in the same launch (one counter per row
    block, see split_counters).

    FP8 weights: k/u/v in float8_e4m3fn and `scales` (3, Hkv, E, De) float32, the per-row
    scales of K, U and V (mhfgen.fp8.stack_scales), w = w8 * scale; q in bf16 or fp16.
    """
    if scales is None:
        return _launch(q, k, u, v, r, config=config)
    if not isinstance(scales, Tensor):
        check_weight_scales(k, scales)  # names the argument (a config passed by position)
    return _launch_fp8(q, k, u, v, r, scales, config=config)


def _run(plan: FwdPlan, q, k, u, v, r, scales=None) -> torch.Tensor:
    """Allocate the output (and the split workspace) and launch the plan's kernel."""
    o = empty(plan.out_shape, q.dtype, q.device)
    if plan.launch is None:
        return o
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    inputs = (q, k, u, v, r) if scales is None else (q, k, u, v, r, scales)
    if not plan.splits:
        plan.launch(*inputs, o)
    else:
        work = empty((plan.splits, *plan.out_shape), torch.float32, q.device)
        plan.launch(*inputs, work, o, split_counters(plan.blocks, q.device))
    return o


def _make_plan(q, k, u, v, r, config, scales=None) -> FwdPlan:
    """Check the inputs, choose the config and compile: everything but the launch."""
    check_weight_scales(k, scales)
    tokens, spec, config, _, _ = checked_call(q, k, u, v, r, None, config, CHOOSE)
    B, L, H, D = q.shape
    if tokens == 0:
        return FwdPlan(None, (B, L, H, D), 0, 0, False)
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
    rows = tokens * config.group_heads
    units = split_units(spec, config.block_n)
    splits = even_splits(units, config.inter_splits)
    if (splits - 1) * B * L * H * D >= INT32_LIMIT:
        # NOTE: the kernel offsets a split's workspace by split x (B * L * H * D) in 32
        # bits; past 2^31 one split does the same work (the split path stays compiled)
        splits = 1
    grid = (cdiv(rows, config.block_m), H // config.group_heads, splits)
    if config.inter_splits == 1:
        out_strides = contiguous_strides((B, L, H, D))[:3]
    else:
        split_strides = contiguous_strides((splits, B, L, H, D))
        out_strides = (*split_strides[1:4], split_strides[0])
    scalars = (*q.stride()[:3], *r.stride(), *out_strides, L, rows)
    return FwdPlan(
        DirectLaunch(kernel, grid, scalars, _triton.launch_meta(config)),
        (B, L, H, D),
        splits if config.inter_splits > 1 else 0,
        grid[0] * grid[1],
        weights_need_copy(k, u, v),
    )


#: the config a call runs with: the given one or the dispatcher's
CHOOSE = partial(resolve_config, KERNEL)
_launch = CachedLaunch(KERNEL, _make_plan, _run)
#: FP8 weights: the plan of (q, k, u, v, r, scales)
_launch_fp8 = CachedLaunch(
    KERNEL, lambda q, k, u, v, r, scales, config: _make_plan(q, k, u, v, r, config, scales), _run
)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------

#: loop_unroll_factor values of the intermediate loop
UNROLL_FACTORS = (1, 2, 4)
#: partial sums whose loads the split reduction issues together
REDUCE_UNROLLS = (1, 4, 8)
#: (token, head) rows up to which the heuristic takes the decode tiles: 16-row blocks
DECODE_ROWS = 64
#: fp32 partial bytes that the last program of a row block reads alone in the split
#: reduction (splits x rows of the block x head_dim x 4), beyond which the heuristic
#: takes smaller row blocks (see reduce_bytes). From a sweep on an H100 (1.3B with 4 kv
#: heads, 16-bit weights, CUDA graphs; docs/PERFORMANCE.md): at 32 tokens 32-row blocks
#: with 8 splits (128 KiB) took 18.9 us, 64-row blocks 25.3-29.1 (256-512 KiB); at 64
#: tokens 32-row blocks with 8 splits 26.2 us, 64-row blocks with 8 (256 KiB) 30.2-33.7
REDUCE_BYTES = 128 * 1024
#: the same with FP8 weights, where a smaller block converts each FP8 tile more often:
#: the sweep's 64-token choice (64-row blocks, 16 splits, 512 KiB: 50 us against 63 for
#: 16-row blocks on an H100)
FP8_REDUCE_BYTES = 512 * 1024


@dataclass(frozen=True)
class Config(_triton.GroupedConfig):
    """The launch config of flash_mhf_fwd (fields: see the module doc)."""

    variant = "flash_mhf_fwd"

    group_heads: int = 1
    inter_splits: int = 1
    tma: bool = False
    prefetch_scores: bool = False
    warp_specialize: bool = False
    unroll: int = 1
    evict_weights: bool = False
    reduce_unroll: int = 1
    pdl: bool = False
    store_reset: bool = True

    #: fields added after configs of this variant were stored: a stored or imported config
    #: without them means these values (whose generated code is the code it was tuned with)
    added_fields = {
        "unroll": 1,
        "evict_weights": False,
        "reduce_unroll": 1,
        "pdl": False,
        "store_reset": False,
    }
    choices = {"unroll": UNROLL_FACTORS, "reduce_unroll": REDUCE_UNROLLS}
    #: added fields that render code only with inter_splits > 1 (VariantConfig.legacy_fields)
    split_fields = ("store_reset",)

    def check_for(self, spec: KernelSpec) -> None:
        super().check_for(spec)
        if self.pdl and not pdl_target(spec.target):
            raise ValueError(
                f"pdl=True (programmatic dependent launch) needs an sm90+ GPU, not {spec.target}"
            )


#: bytes of one L2 prefetch (a cache line)
LINE_BYTES = 128


def pdl_params(spec: KernelSpec, config: Config) -> dict:
    """The template's prefetch before griddepcontrol.wait: pdl_rows rows of each of K, U
    and V (the num_stages tiles the loop's pipeline loads first), covered by pdl_lines
    128-byte lines (a power of two) of pdl_line_elems elements each."""
    rows = config.num_stages * config.block_n
    line_elems = LINE_BYTES // spec.weight_torch_dtype.itemsize
    lines = pow2_ceil(cdiv(rows * spec.head_dim, line_elems))
    return dict(pdl_rows=rows, pdl_lines=lines, pdl_line_elems=line_elems)


def reduce_bytes(spec: KernelSpec, rows: int, block_m: int, splits: int) -> int:
    """Bytes of fp32 partials the last program of a row block reads in the split
    reduction: splits x min(block_m, rows) x head_dim x 4 (0 without splits). One SM reads
    them while the rest of the GPU has finished, so they add to every call's time: on an
    H100, 1.3B with 4 kv heads (16-bit), 128-row blocks with 33 splits (2.1 MB) took
    43.9 us at 32 tokens against 16.7 us at 8 tokens (16-row blocks, 32 splits, 256 KiB):
    1.9 MB more in 27.2 us more, about 70 GB/s for that one program (docs/PERFORMANCE.md)."""
    if splits <= 1:
        return 0
    return splits * min(block_m, rows) * spec.head_dim * 4


def heuristic_splits(
    spec: KernelSpec, rows: int, block_m: int, units: int, waves: int, sm_count: int
) -> int:
    """inter_splits of the heuristic for `rows` rows in `block_m`-row blocks: where the
    row blocks fill at most half the SMs (few tokens, on a GPU), enough to fill `waves`
    waves of programs (a partial wave would leave most SMs idle), at most one per
    intermediate tile (`units` of them); else 1."""
    programs = cdiv(rows, block_m) * spec.kv_heads
    if spec.target == INTERPRETER or 2 * programs > sm_count:
        return 1
    return max(1, min(units, waves * (sm_count // programs)))


class FlashMhfFwd(_triton.TritonVariant):
    stem = "flash_mhf_fwd"
    op = "fwd"
    Config = Config
    schema2_kernel = "flash_mhf_fwd"
    flop_factor = 6  # S = q K^T, A = q U^T, then P V: 3 GEMMs of 2 N FLOPs
    outputs = ("o",)
    #: the uniform dtypes and the FP8-weight ones (K, U, V in e4m3, converted in registers)
    dtypes = (*DTYPES, *FP8_WEIGHT_DTYPES)
    #: heuristic start on a GPU: sweep on an H200 (bf16, 1.3B shape, 16384 tokens)
    gpu_start = (128, 64, 8, 3)

    def static_params(self, spec: KernelSpec, config: Config) -> dict:
        params = _triton.tile_params(spec, config)
        even = params["even_de"]
        params.update(
            group_heads=config.group_heads,
            inter_split=config.inter_splits > 1,
            tma=config.tma,
            prefetch_scores=config.prefetch_scores and even,
            warp_specialize=config.warp_specialize and even and not config.prefetch_scores,
        )
        # the Helion knobs enter the parameters (and the header's record of them) only
        # away from their defaults, so every config without them keeps its generated code
        # and its stored records their code hash
        if config.unroll > 1 and not params["warp_specialize"]:
            params["unroll"] = config.unroll
        if config.evict_weights and not config.tma:
            params["evict_weights"] = True
        if config.reduce_unroll > 1 and config.inter_splits > 1:
            params["reduce_unroll"] = config.reduce_unroll
        if config.store_reset and config.inter_splits > 1:
            params["store_reset"] = True
        if config.pdl:
            params.update(pdl_params(spec, config))
        if spec.fp8_weights:  # K, U, V in FP8, a scale per row (mhfgen.fp8)
            # where V's row scales go: into the activation tile p (bf16: fp32's exponent
            # range, no extra rounding) or into the V tile (fp16: p * scale underflows)
            params["fp8_weights"] = "p" if spec.activation_dtype == "bfloat16" else "v"
        return params

    def shared_memory(self, spec: KernelSpec, config: Config) -> int:
        dp = _triton.padded_head_dim(spec, config)
        bm, bn, st = config.block_m, config.block_n, config.num_stages
        # unroll is not in the formula: on an H200 unroll 2 ran out of shared memory at
        # some decode configs and not at others whose doubled ring would not fit either
        # (docs/PERFORMANCE.md); such candidates are failed trials with Triton's reason
        b, wb = spec.torch_dtype.itemsize, spec.weight_torch_dtype.itemsize
        elems = bm * dp + (bm * bn if spec.dtype == "float32" else 0)
        return st * 3 * bn * dp * wb + elems * b + 1024

    def registers(self, spec: KernelSpec, config: Config) -> float:
        bm, bn, dp = config.block_m, config.block_n, _triton.padded_head_dim(spec, config)
        return (bm * dp + 2 * bm * bn) / (32 * config.num_warps)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> Config:
        """All of a kv group's query heads per program; on a GPU, when the programs fill
        at most half the SMs (decode), inter_splits to fill one wave (two with FP8
        weights or more than one 16-row block) and the split reduction's loads unrolled.
        pdl stays off: on an H100 it gave no dependable gain at 1 to 64 tokens, signalled
        early or after the weight loop (docs/SERVING.md); the tuner tries it on sm90+.

        The decode rules come from a sweep on an H100 (1.3B, 1 to 64 tokens, CUDA graphs;
        docs/PERFORMANCE.md, "Decode"): the best bf16 configs at 1 and 8 tokens were one
        wave of 16-row programs (8 splits), at 64 tokens 16-row blocks with twice the
        splits (a wave of 64-row blocks read the weights at 56% of copy bandwidth, 16-row
        blocks at 62%); with FP8 weights, half the bytes per program, 32-column tiles,
        two waves' worth of splits (22.5 against 30.3 us at 1 token) and all of a kv
        group's rows in one block, so that each tile is converted once (at 64 tokens
        50 us against 63 for 16-row blocks); and 8 unrolled reduction loads in every one
        of them.

        Every split config then takes the largest row block (down to 16 rows) whose
        split reduction reads at most REDUCE_BYTES (FP8_REDUCE_BYTES with FP8 weights;
        reduce_bytes): with grouped heads, 32 tokens of 4 heads a kv head are 128 rows,
        past the decode tiles, and the start's 128-row blocks with a wave of splits read
        2.1 MB there, one program alone at the end of the call."""
        heads = spec.group
        rows = tokens * heads
        tiles = _triton.start_tiles(self, spec, rows)
        decode = spec.target != INTERPRETER and rows <= DECODE_ROWS
        if decode:
            tiles.update(block_m=16, num_warps=4)
            if spec.fp8_weights:
                tiles["block_n"] = _triton.pick_block_n(spec.expert_dim, 32)
                # one row block per kv group: each FP8 tile is converted once
                tiles["block_m"] = _triton.rows_block(rows, DECODE_ROWS)
        units = split_units(spec, tiles["block_n"])
        waves = 2 if decode and (spec.fp8_weights or rows > 16) else 1
        splits = heuristic_splits(spec, rows, tiles["block_m"], units, waves, sm_count)
        # halve the row blocks (more of them, fewer splits each) while the reduction's
        # serial read exceeds its bound, as far as the tile rules allow
        limit = FP8_REDUCE_BYTES if spec.fp8_weights else REDUCE_BYTES
        while tiles["block_m"] > 16 and reduce_bytes(spec, rows, tiles["block_m"], splits) > limit:
            block_m = tiles["block_m"] // 2
            smaller = dict(
                tiles, block_m=block_m, num_warps=4 if block_m < 64 else tiles["num_warps"]
            )
            smaller_splits = heuristic_splits(spec, rows, block_m, units, waves, sm_count)
            if _triton.tile_prune_reason(
                spec, Config(**smaller, inter_splits=smaller_splits), rows
            ):
                break  # a 64-row warpgroup MMA for 256 rows or more without splits (sm90)
            tiles, splits = smaller, smaller_splits
        unroll = REDUCE_UNROLLS[-1] if splits > 1 else 1
        config = Config(**tiles, group_heads=heads, inter_splits=splits, reduce_unroll=unroll)
        return _triton.shrink_to_fit(self, spec, config)

    def supports(self, spec: KernelSpec, tokens: int | None) -> str | None:
        if spec.fp8_weights and not fp8_target(spec.target):
            return f"FP8 weights need FP8 tensor cores (sm89 or later), not {spec.target}"
        return None

    def own_prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, rows: int, sm_count: int
    ) -> str | None:
        if config.prefetch_scores and not even_tiles(spec, config.block_n):
            return "prefetch_scores applies only when block_n divides expert_dim"
        if config.warp_specialize and not even_tiles(spec, config.block_n):
            return "warp_specialize applies only when block_n divides expert_dim"
        if config.warp_specialize and config.prefetch_scores:
            return "warp_specialize does not apply to the prefetch_scores loop"
        if config.unroll > 1 and config.warp_specialize:
            return "unroll does not apply to the warp-specialised loop"
        if config.evict_weights and config.tma:
            return "evict_weights applies to pointer loads, not tma"
        if config.reduce_unroll > 1 and config.inter_splits == 1:
            return "reduce_unroll applies to the split reduction (inter_splits > 1)"
        if config.inter_splits > 1:
            tiles = split_units(spec, config.block_n)
            programs = cdiv(rows, config.block_m) * (spec.heads // config.group_heads)
            what = f"the {tiles} intermediate tiles"
            return _triton.split_reason(config, "inter_splits", tiles, what, programs, sm_count)
        return None


register(FlashMhfFwd())
