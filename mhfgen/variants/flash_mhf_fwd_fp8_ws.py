"""flash_mhf_fwd_fp8_ws: the warp-specialised Gluon forward for Hopper in FP8 arithmetic
(W8A8; flash_mhf_fwd_fp8_ws.py.jinja).

The schedule of flash_mhf_fwd_ws (a one-warp TMA producer feeding a K/U/V ring, one or
two consumer warpgroups issuing async wgmma) with every GEMM an e4m3 x e4m3 wgmma
accumulating in fp32, on the FP8-weight dtypes (bfloat16_e4m3, float16_e4m3: K, U, V in
float8_e4m3fn with one float32 scale per (kv head, expert, row), mhfgen.fp8). It
quantises the activations too, so its outputs meet the bar of mhfgen.tolerances.
FP8_ACTIVATIONS_BAR, not the weight-only one; MHFGEN_FP8_ACTIVATIONS=0 takes it out of
dispatch (mhfgen.registry.usable), leaving mhfgen.flash_mhf_fp8 on the weight-only
flash_mhf_fwd. FP8 layers do not run it at prefill (mhfgen.ops.fp8_forward_pays).

sm90 only, head_dim 64 or 128, block_n dividing expert_dim. Where it supports a call it
is the preferred forward of its dtypes (tuned winners of either still come first), decode
included: there its heuristic splits each kv head's weight tiles over programs that fill
one wave (inter_splits; the partials summed in the launch), the weights read once at 1
byte each and every product an e4m3 wgmma.

The arithmetic, per consumer (BLOCK_M rows of one query head), emulated in float64 by
mhfgen.reference.flash_mhf_w8a8:
    1. q's rows quantised once: s_q = max_d |q| / 448, q8 = e4m3(q / s_q) (0 for a zero row)
    2. per weight tile j (BLOCK_N weight rows): S = (q8 K8^T) s_q k_scale,
       G = (q8 U8^T) s_q u_scale (fp32 accumulators), p' = silu(S) G r v_scale
       (computed as y = silu(S) (q8 U8^T) u_scale v_scale, p' = y s_q r: the row factor
       applied after the row maximum, max |p'| = |s_q r| max |y|)
    3. m_new = max(m, max_col |p'|) (running per-row max, m = 0 at first);
       O *= m / m_new; O += e4m3(p' * 448 / m_new) V8; m = m_new
    4. o = O * m / 448, in q's dtype.
V's FP8 data is read transposed, (Hkv, E, D, De) with De contiguous (an e4m3 wgmma reads
its shared-memory operands K-major only): mhfgen.fp8.transposed_v makes it once per
tensor and version (11.5 MB at the 1.3B preset) and keeps it while the tensor lives.

Its config's fields: see Fp8WsConfig. Resources: shared memory = consumers' Q tiles (q's
dtype, reused for O) and their e4m3 copies + stages * 3 e4m3 weight tiles + mbarriers +
1 KiB; registers = BLOCK_M * (D + 4 * BLOCK_N) / (32 * consumer_warps) accumulator values
per consumer thread, as flash_mhf_fwd_ws.

Tensor layouts the kernel reads through TMA descriptors:
    q, o  (B, L, H, D) viewed as (B * L, H * D), blocks (BLOCK_M, D) at [t0, head * D]
    k8/u8 (Hkv, E, De, D) viewed as (Hkv * E * De, D), blocks (BLOCK_N, D)
    v8^T  (Hkv, E, D, De) viewed as (Hkv * E * D, De), blocks (D, BLOCK_N)
    column factors (2, Hkv, E, De) float32 (k_scale, u_scale * v_scale per intermediate
    row: mhfgen.fp8.column_factors of the scales, kept per scales tensor) and r
    (B, L, H, E) fp32 with plain loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .. import codegen
from .. import device as _device
from ..fp8 import kept_column_factors, kept_expert_bounds, transposed_v
from ..kernels import sm90
from ..kernels.buffers import empty, split_counters
from ..kernels.launch import Tma, host_descriptors
from ..kernels.plans import CachedLaunch
from ..registry import register
from ..spec import FP8_STORAGE, KernelSpec, dtype_name
from ..tiling import even_splits, pow2_ceil, split_programs_budget
from ..validation import INT32_LIMIT, check_flash_mhf_inputs, check_weight_scales
from . import _gluon

KERNEL = "flash_mhf_fwd_fp8_ws"
TEMPLATE = f"{KERNEL}.py.jinja"
DTYPES = ("bfloat16_e4m3", "float16_e4m3")
HEAD_DIMS = (64, 128)
#: partial loads the split reduction issues at once (reduce_unroll; the tuner searches
#: it, the swapped decode heuristic takes the most that fit)
REDUCE_UNROLLS = (1, 2, 4, 8)
#: (reduce_unroll + 2) x a thread's partial values (the loads in flight, the sum and the
#: partial) at most this many registers: past it the sm90 compiles spilled (swap_ab = 32
#: with 8 loads, the unswapped 64-row partial with 2)
REDUCE_REGISTERS = 192
#: accumulator values a thread (registers()) at most for two swapped consumers: at 192 (64
#: tokens, 64-row tiles, D = 128) every sm90 compile spilled (112 to 356 bytes, either
#: sigmoid and act_scale); at 160 none did
SWAPPED_PAIR_REGISTERS = 160


@dataclass(frozen=True)
class Fp8WsConfig(_gluon.ForwardConsumersConfig):
    """Launch parameters of flash_mhf_fwd_fp8_ws (its registry config type).

    block_n:        intermediate columns per weight tile (the ring slot's rows); divides
                    expert_dim.
    stages:         slots of the K/U/V ring (>= 3: V of tile j is read while tile j+1's
                    GEMMs are issued and tile j+2 loads).
    consumers:      consumer partitions sharing each weight tile (1 or 2).
    consumer_warps: warps per consumer (4 = one warpgroup, 64 rows; 8 = two, 128 rows).
    group_heads:    query heads of one kv group among a program's consumers (divides
                    consumers and H / Hkv); the others take further token blocks.
    pingpong:       two consumers take turns issuing their GEMMs (needs consumers = 2).
    sigmoid:        'tanh' (one tanh.approx per element) or 'exp' (exp2 + fast divide).
    joint_scores:   S and G by one wgmma of twice the width, [S | G] = q8 [K8; U8]^T (K8
                    and U8 of a weight tile stacked in one ring tile; block_n <= 128). At
                    D = 128 it spills a few registers and ran 0.92x separate ones.
    producer_regs, consumer_regs: registers per thread of the producer and of the second
                    consumer partition (setmaxnreg); the first consumer gets what is left.
    p_operand:      where O += p8 V8 reads its A operand, the e4m3 activation tile:
                    'shared' (stored to a per-consumer shared tile) or 'registers'. With
                    'registers' ptxas finds too few registers to keep the wgmma pipeline
                    and serialises every wgmma of the kernel (sm90.ptxas_report).
    unroll_tiles:   weight tiles per iteration of a consumer's loop (1 or 2): with 2 the
                    registers of the pending S and G alternate between the two tiles
                    instead of being copied into the loop-carried ones every tile.
    staged_scales:  the consumers' loop makes no global load: each weight tile's column
                    factors come by TMA into its ring slot with K8 and U8, and every
                    expert's routing weights of a consumer's rows are staged in shared
                    memory once. Otherwise the loop loads the next tile's from global
                    memory before the shared-memory fence of O's product, which (a MEMBAR
                    in SASS) waits for them.
    inter_splits:   programs that share a work tile's weight tiles (decode: few work tiles
                    would leave most SMs idle); each writes an fp32 partial to a workspace
                    and the last of them sums the partials in split order, in the same
                    launch (deterministic; no host work, so CUDA graphs capture it).
    reduce_unroll:  with inter_splits, the last program of a work tile loads this many
                    splits' partials at once (1, 2, 4 or 8), then adds them in split order
                    (the sum and its order are the same; with 1 each load waits for the
                    previous add).
    store_reset:    with inter_splits, the last program resets its ticket counter with a
                    plain store (True) instead of an acq_rel atomic exchange (False, the
                    code of configs stored before the field), whose release fence waited
                    for the output's stores (flash_mhf_fwd's field of the same name).
    swap_ab:        0, or the tokens per program (16, 32 or 64) of the swapped-operand
                    decode schedule: the weight rows are the wgmma's M and the tokens its
                    N (scores S^T = K8 q8^T, output O^T = V8^T p8^T), so a tile's
                    element-wise work is block_n x swap_ab values instead of 64 x block_n.
                    It takes the split reduction, staged scales, 4-warp consumers (one,
                    or two sharing each weight tile: two heads of a kv group with
                    group_heads = 2, else two token blocks) and the defaults of the
                    other schedule fields.
    pdl:            with swap_ab, programmatic dependent launch: the launch may begin
                    while the stream's previous kernel ends, and one program of those
                    reading a split's weights asks L2 for its first `stages` tiles (K8/U8
                    rows, V8^T blocks, column factors) before griddepcontrol.wait; q, r,
                    the workspace, the output and the tickets are touched only after it
                    (the template's _prefetch_split). Each program signals
                    griddepcontrol.launch_dependents once its loop is done, so the next
                    kernel so launched may start while the last splits reduce.
    act_scale:      how a row's activations p' are scaled to e4m3 for O += p8 V8:
                    'running' by the running maximum of |p'| over the tiles so far (O
                    rescaled whenever it grows: a row maximum, a rescale of O and its
                    wait on the previous product every tile), or 'bound' by a power of
                    two fixed before the first tile that no |p'| of the row can pass,
                    |q~|^2 max_e |r_e| c_e (mhfgen.fp8.expert_bounds; the tile loop then
                    only multiplies and converts). Both are emulated exactly by
                    mhfgen.reference.flash_mhf_w8a8. The built-in configs take 'bound':
                    on an H100 (1.3B preset, 2026-12-07) it ran the prefill forward
                    1.14x faster (758 against 664 TFLOP/s at 16384 tokens) and the
                    swapped decode 1.02x to 1.04x faster at 1 to 64 tokens, as accurate
                    (docs/PERFORMANCE.md).
    p_buffers:      shared-memory tiles of e4m3 activations per consumer (1 or 2; needs
                    act_scale='bound', p_operand='shared', separate scores, no pingpong
                    and the unswapped schedule). With 2, tile j's goes to buffer j % 2
                    and O += p8_j V8_j is issued as soon as it is stored, chained on the
                    pending O_(j-1), before the wait for tile j+1's scores; with 1 that
                    wait (which completes O_(j-1) too) comes first, because the buffer
                    is O_(j-1)'s operand.
    """

    variant = KERNEL

    block_n: int = 64
    stages: int = 4
    consumers: int = 2
    consumer_warps: int = 4
    group_heads: int = 1
    pingpong: bool = False
    sigmoid: str = "tanh"
    joint_scores: bool = False
    producer_regs: int = 24
    consumer_regs: int = 240
    p_operand: str = "shared"
    unroll_tiles: int = 1
    inter_splits: int = 1
    staged_scales: bool = False
    swap_ab: int = 0
    reduce_unroll: int = 1
    store_reset: bool = True
    pdl: bool = False
    act_scale: str = "bound"
    p_buffers: int = 1

    #: fields added after configs of this variant were stored: a stored config without
    #: them means these values
    added_fields = {
        "p_operand": "registers",
        "unroll_tiles": 1,
        "inter_splits": 1,
        "staged_scales": False,
        "swap_ab": 0,
        "reduce_unroll": 1,
        "store_reset": False,
        "pdl": False,
        "act_scale": "running",
        "p_buffers": 1,
    }

    #: added fields that render code only with inter_splits > 1 (VariantConfig.legacy_fields)
    split_fields = ("store_reset",)

    choices = dict(
        block_n=(64, 128),
        stages=range(3, 9),
        consumers=(1, 2),
        consumer_warps=(4, 8),
        group_heads=(1, 2),
        p_operand=("shared", "registers"),
        unroll_tiles=(1, 2),
        inter_splits=range(1, 129),
        staged_scales=(False, True),
        swap_ab=(0, 16, 32, 64),
        reduce_unroll=REDUCE_UNROLLS,
        pdl=(False, True),
        act_scale=("running", "bound"),
        p_buffers=(1, 2),
    )

    @property
    def block_m(self) -> int:
        """Tokens per consumer: swap_ab's where the operands are swapped, else 16 per warp
        (the wgmma atom is 4 warps x 16 rows)."""
        return self.swap_ab or 16 * self.consumer_warps

    def describe(self) -> str:
        text = super().describe() + (" p-regs" if self.p_operand == "registers" else "")
        text += f" split{self.inter_splits}" if self.inter_splits > 1 else ""
        text += f" ru{self.reduce_unroll}" if self.reduce_unroll > 1 else ""
        text += " xchg" if self.inter_splits > 1 and not self.store_reset else ""
        text += " staged" if self.staged_scales else ""
        text += f" swap{self.swap_ab}" if self.swap_ab else ""
        text += " pdl" if self.pdl else ""
        text += " pbuf2" if self.p_buffers == 2 else ""
        return text + (" runmax" if self.act_scale == "running" else "")


# ---------------------------------------------------------------------------------------
# what the variant supports, and what a config needs
# ---------------------------------------------------------------------------------------


def unsupported(spec: KernelSpec, tokens: int | None = None) -> str | None:
    """Why flash_mhf_fwd_fp8_ws cannot run `spec`, or None when it can (at any `tokens`:
    decode sizes take the split schedules)."""
    if not spec.target.startswith("sm9"):
        return f"Gluon FP8 wgmma kernel for sm90 (Hopper); target is {spec.target}"
    if spec.dtype not in DTYPES:
        return f"FP8 weights (bfloat16_e4m3, float16_e4m3) only; dtype is {spec.dtype}"
    if spec.head_dim not in HEAD_DIMS:
        return (
            f"head_dim 64 or 128 (one e4m3 tile); it is {spec.head_dim}: flash_mhf_fwd "
            f"runs it on FP8 weights"
        )
    if spec.expert_dim % 64:
        return (
            f"expert_dim must be a multiple of 64 (block_n divides it); it is "
            f"{spec.expert_dim}: flash_mhf_fwd runs it on FP8 weights"
        )
    return None


def config_problems(spec: KernelSpec, config: Fp8WsConfig) -> list[str]:
    """Why `config` cannot run `spec` (empty when it can): tiles, head grouping, shared
    memory, registers."""
    problems = []
    if spec.expert_dim % config.block_n:
        problems.append(
            f"block_n={config.block_n} must divide expert_dim={spec.expert_dim} "
            f"(a weight tile lies in one expert)"
        )
    if spec.group % config.group_heads:
        problems.append(f"group_heads={config.group_heads} must divide H/Hkv={spec.group}")
    if config.inter_splits > 1 and (
        config.p_operand != "shared" or config.pingpong or config.unroll_tiles > 1
    ):
        problems.append(
            "the split reduction (a decode schedule) takes p_operand='shared', no pingpong "
            "and one tile per iteration (the others' shared-memory scratch beside it is not "
            "modelled)"
        )
    if config.reduce_unroll > 1 and config.inter_splits == 1:
        problems.append("reduce_unroll applies to the split reduction (inter_splits > 1)")
    elif not reduce_fits(spec, config):
        problems.append(
            f"reduce_unroll={config.reduce_unroll} holds {reduce_registers(spec, config):g} "
            f"partial values a thread (> {REDUCE_REGISTERS}): the loads would spill"
        )
    if config.swap_ab and (
        config.inter_splits == 1
        or not config.staged_scales
        or config.consumer_warps != 4
        or config.joint_scores
        or config.p_operand != "shared"
    ):
        problems.append(
            "swap_ab (the swapped-operand decode schedule) takes inter_splits > 1, "
            "staged_scales, 4-warp consumers, separate scores and p_operand='shared'"
        )
    if (
        config.swap_ab
        and config.consumers == 2
        and registers(spec, config) > SWAPPED_PAIR_REGISTERS
    ):
        problems.append(
            f"two swapped consumers hold {registers(spec, config):g} accumulator values a "
            f"thread (> {SWAPPED_PAIR_REGISTERS}): their sm90 compiles spill"
        )
    if config.p_buffers == 2 and (
        config.act_scale != "bound"
        or config.p_operand != "shared"
        or config.joint_scores
        or config.pingpong
        or config.swap_ab
    ):
        problems.append(
            "p_buffers=2 (O's product before the wait for the next scores) takes "
            "act_scale='bound', p_operand='shared', separate scores, no pingpong and the "
            "unswapped schedule"
        )
    if config.pdl and not config.swap_ab:
        problems.append(
            "pdl (programmatic dependent launch) takes the swapped decode schedule (swap_ab)"
        )
    problems += _gluon.forward_resource_problems(spec, config, shared_memory(spec, config))
    return problems


#: bytes kept for the compiler's own shared-memory use beside the buffers the kernel
#: allocates (alignment, barrier padding)
SCRATCH_RESERVE = 1024


def shared_memory(spec: KernelSpec, config: Fp8WsConfig) -> int:
    """Bytes: the consumers' Q tiles in q's dtype (reused for O) and in e4m3, STAGES slots
    of e4m3 K, U and V^T tiles, the mbarriers, SCRATCH_RESERVE, and with the split
    reduction each consumer's fp32 O once more (its conversion out of the wgmma layout);
    with staged scales each slot's fp32 column factors (2 x block_n) and each consumer's
    routing weights (E rounded up to a power of two x block_m, fp32)."""
    q = config.consumers * config.block_m * spec.head_dim * (2 + 1)
    p = config.consumers * config.block_m * config.block_n * config.p_buffers
    p = p if config.p_operand == "shared" else 0
    ring = config.stages * 3 * config.block_n * spec.head_dim
    convert = (
        config.consumers * config.block_m * spec.head_dim * 4 if config.inter_splits > 1 else 0
    )
    staged = 0
    if config.staged_scales:
        experts = pow2_ceil(spec.experts)
        staged = 4 * (
            config.stages * 2 * config.block_n + config.consumers * experts * config.block_m
        )
    barriers = 8 * (3 * config.stages + 2 * config.consumers + 2)
    return q + p + ring + convert + staged + barriers + SCRATCH_RESERVE


#: fp32 accumulator values per consumer thread; the launch's register cap (both as
#: flash_mhf_fwd_ws's: the same partitions and accumulators)
registers = _gluon.forward_registers
max_registers = _gluon.forward_max_registers


def default_config(
    spec: KernelSpec, tokens: int, sm_count: int = 0, *, swapped: bool = True
) -> Fp8WsConfig:
    """The built-in config: two 4-warp consumers sharing 64-column tiles of a 4-slot ring,
    tanh silu, S and G by separate wgmma and the activations' A operand in shared memory
    (on an H100 at the 1.3B preset and 16384 tokens: 1.09x joint score MMAs, which lose
    their overlap to the split of [S | G]; docs/PERFORMANCE.md); 3 slots where 4 do not
    fit.

    Few work tiles (decode; on an H100 at the 1.3B preset, docs/PERFORMANCE.md): at one
    token block, two consumers on two query heads of a kv group where H / Hkv is even
    (each weight tile serves both), else one; and wherever the work tiles fill at most
    half the SMs, the weight tiles split over inter_splits programs so that one wave
    covers them (decode_splits), with the loop's scales staged in shared memory
    (staged_scales: 1.03x to 1.08x at 1 to 64 tokens in the same run; at prefill it made
    no difference and stays off). Up to SWAP_TOKENS tokens such a split takes the
    swapped-operand schedule (swapped_decode_config: 16 tokens per program, 128-row weight
    tiles where they divide expert_dim; on an H100 1.03x to 1.29x the unswapped split at
    1 to 64 tokens of the 370M and 1.3B presets but 0.97x at 64 tokens of 1.3B, and 1.17x
    to 1.63x at 1.3B with 4 kv heads). swapped=False keeps the unswapped split (the A/B
    of benchmarks/fp8_fwd_check.py --decode)."""
    base = Fp8WsConfig()
    if 0 < tokens <= base.block_m:
        heads = 2 if spec.group % 2 == 0 else 1
        base = Fp8WsConfig(consumers=heads, group_heads=heads)
    if sm_count and tokens > 0:
        splits = decode_splits(spec, base, tokens, sm_count)
        base = replace(base, inter_splits=splits, staged_scales=splits > 1)
        if swapped and splits > 1 and tokens <= SWAP_TOKENS:
            config = swapped_decode_config(spec, tokens, sm_count)
            if not config_problems(spec, config):
                return config
    return _ring_that_fits(spec, base) or replace(base, stages=3, consumers=1, group_heads=1)


def reduce_registers(spec: KernelSpec, config: Fp8WsConfig) -> float:
    """Registers a consumer thread's split reduction holds: (reduce_unroll + 2) x its
    share of the BLOCK_M x D partial."""
    values = config.block_m * spec.head_dim / (32 * config.consumer_warps)
    return (config.reduce_unroll + 2) * values


def reduce_fits(spec: KernelSpec, config: Fp8WsConfig) -> bool:
    """Whether the split reduction's unrolled loads fit REDUCE_REGISTERS (always with 1)."""
    return config.reduce_unroll == 1 or reduce_registers(spec, config) <= REDUCE_REGISTERS


def _ring_that_fits(spec: KernelSpec, base: Fp8WsConfig) -> Fp8WsConfig | None:
    """`base` with 4 ring slots, else 3, whichever config_problems accepts first; None
    when neither fits."""
    for stages in (4, 3):
        candidate = replace(base, stages=stages)
        if not config_problems(spec, candidate):
            return candidate
    return None


def swapped_decode_config(
    spec: KernelSpec,
    tokens: int,
    sm_count: int,
    swap: int = 16,
    block_n: int | None = None,
    consumers: int = 1,
    pdl: bool = True,
) -> Fp8WsConfig:
    """The swapped-operand decode schedule with `swap` tokens per consumer (swap_ab):
    `consumers` 4-warp consumers sharing each weight tile (two: two heads of a kv group
    where H / Hkv is even, else two token blocks), staged scales, `block_n`-row weight
    tiles (default 128 where they divide expert_dim, else 64), the splits that fill one
    wave (decode_splits, at least 2), 4 ring slots (3 where 4 do not fit), the split
    reduction's partial loads issued together, as many as fit (reduce_unroll 8 with 16
    tokens per consumer: on an H100 1.01x to 1.13x one at a time, at 1 to 32 tokens of
    1.3B, 1.3B with 4 kv heads and 370M, the outputs as accurate; docs/SERVING.md), and
    programmatic dependent launch (`pdl`).

    One consumer is the heuristic's: two (each weight tile serving two heads or two
    token blocks) ran at 0.80x to 0.99x its speed in the same comparisons. pdl is, because
    on an H100 (2026-12-07; 1.3B, 370M and 1.3B with 4 kv heads, 1 to 64 tokens, CUDA
    graphs) it ran 1.02x to 1.25x faster after the layer's RMSNorm and router kernel (the
    order in which the layer runs it) and 1.02x to 1.15x back to back, with the outputs
    bitwise those without it; directly after a cuBLAS GEMM, which does not signal
    launch_dependents, it ran 0.95x to 1.02x (docs/SERVING.md)."""
    if block_n is None:
        block_n = 128 if spec.expert_dim % 128 == 0 else 64
    heads = 2 if consumers == 2 and spec.group % 2 == 0 else 1
    base = Fp8WsConfig(
        block_n=block_n,
        consumers=consumers,
        group_heads=heads,
        staged_scales=True,
        swap_ab=swap,
        pdl=pdl,
    )
    splits = max(2, decode_splits(spec, replace(base, inter_splits=2), tokens, sm_count))
    base = replace(base, inter_splits=min(splits, spec.intermediate // base.block_n))
    unroll = next(
        u for u in reversed(REDUCE_UNROLLS) if reduce_fits(spec, replace(base, reduce_unroll=u))
    )
    base = replace(base, reduce_unroll=unroll)
    return _ring_that_fits(spec, base) or replace(base, stages=3)


#: the decode heuristic swaps the operands up to this many tokens (default_config)
SWAP_TOKENS = 64


def decode_splits(spec: KernelSpec, config: Fp8WsConfig, tokens: int, sm_count: int) -> int:
    """Splits of the weight tiles that fill one wave: as many as sm_count // work tiles,
    at most one weight tile each, 1 where the work tiles alone fill half the SMs."""
    tiles = work_tiles(spec, config, tokens)
    if 2 * tiles > sm_count:
        return 1
    return max(1, min(sm_count // tiles, spec.intermediate // config.block_n))


def call_problems(spec: KernelSpec, config: Fp8WsConfig, tokens: int, sm_count: int) -> list:
    """Splits that only add partial-sum traffic: more than the kv head's weight tiles, or
    more programs than mhfgen.tiling.split_programs_budget allows; and no split where the
    work tiles alone fill at most half the SMs (decode: most SMs idle)."""
    if config.inter_splits == 1:
        tiles = work_tiles(spec, config, max(1, tokens))
        if sm_count and 2 * tiles <= sm_count and spec.intermediate >= 2 * config.block_n:
            return [
                f"{tiles} work tiles leave most of the {sm_count} SMs idle: decode sizes "
                f"split the weight tiles (inter_splits)"
            ]
        return []
    tiles = spec.intermediate // config.block_n
    if config.inter_splits > tiles:
        return [f"inter_splits={config.inter_splits} exceeds the {tiles} weight tiles"]
    budget = split_programs_budget(sm_count)
    if work_tiles(spec, config, max(1, tokens)) * config.inter_splits > budget:
        return [f"inter_splits={config.inter_splits} makes more than {budget} programs"]
    return []


# ---------------------------------------------------------------------------------------
# code generation
# ---------------------------------------------------------------------------------------


def static_params(spec: KernelSpec, config: Fp8WsConfig) -> dict:
    """The parts of (spec, config) that change the generated code's structure."""
    return {
        "consumers": config.consumers,
        "group_heads": config.group_heads,
        "pingpong": config.pingpong,
        "sigmoid": config.sigmoid,
        **({"joint_scores": True} if config.joint_scores else {}),
        **({"p_operand": config.p_operand} if config.p_operand != "shared" else {}),
        **({"unroll_tiles": 2} if config.unroll_tiles == 2 else {}),
        **({"inter_split": True} if config.inter_splits > 1 else {}),
        **({"staged_scales": True} if config.staged_scales else {}),
        **({"swap_ab": True} if config.swap_ab else {}),
        **({"reduce_unroll": config.reduce_unroll} if config.reduce_unroll > 1 else {}),
        **({"store_reset": True} if config.store_reset and config.inter_splits > 1 else {}),
        **({"pdl": True} if config.pdl else {}),
        **({"act_scale": "bound"} if config.act_scale == "bound" else {}),
        **({"p_buffers": 2} if config.p_buffers == 2 else {}),
    }


def template_hash() -> str:
    """sha256 (16 hex digits) of the template (mhfgen.codegen.template_hash)."""
    return codegen.template_hash(KERNEL)


def render(spec: KernelSpec, config: Fp8WsConfig) -> str:
    """The generated Gluon source for `spec` and `config` (mhfgen.codegen.render)."""
    return codegen.render(KERNEL, spec, config)


def load_kernel(spec: KernelSpec, config: Fp8WsConfig):
    """Render (or reuse) and import the generated module (mhfgen.codegen.load_kernel);
    its @gluon.jit kernel."""
    return codegen.load_kernel(KERNEL, spec, config)


def descriptor_layouts(spec: KernelSpec, config: Fp8WsConfig) -> tuple:
    """(block shape, NVMMASharedLayout) of the kernel's TMA descriptors, in its argument
    order: q (q's dtype), k8, u8, v8^T (e4m3), o (q's dtype), and with staged scales the
    column factors ((2, block_n) fp32 blocks, unswizzled)."""
    from triton.experimental.gluon import language as gl

    D, bm, bn = spec.head_dim, config.block_m, config.block_n

    def block(rows: int, cols: int, dtype) -> tuple:
        return [rows, cols], gl.NVMMASharedLayout.get_default_for([rows, cols], dtype)

    act = {"bfloat16": gl.bfloat16, "float16": gl.float16}[spec.activation_dtype]
    rows = block(bm, D, act)
    layouts = (
        rows,
        block(bn, D, gl.float8e4nv),
        block(bn, D, gl.float8e4nv),
        block(D, bn, gl.float8e4nv),
        rows,
    )
    if not config.staged_scales:
        return layouts
    cols = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    return (*layouts, ([2, bn], cols))


def descriptors(layouts: tuple, *views) -> list:
    """The TMA operands (kernels.launch.Tma) over the 2-D views of the module doc (q, k8,
    u8, v8^T, o, and with staged scales the (2, Hkv * I) column factors), one per entry
    of `layouts` (descriptor_layouts)."""
    if len(views) != len(layouts):
        raise ValueError(f"{len(layouts)} descriptor layouts for {len(views)} tensors")
    return [Tma(view, *layout) for view, layout in zip(views, layouts)]


#: the kernel's constexprs (_gluon: shared by the warp-specialised forwards)
constexprs = _gluon.forward_constexprs


def launch_options(config: Fp8WsConfig) -> dict:
    """The launch options of the warp-specialised forwards (_gluon.forward_launch_options),
    and with `pdl` the programmatic-dependent-launch attribute (launch_pdl)."""
    options = _gluon.forward_launch_options(config)
    return {**options, "launch_pdl": True} if config.pdl else options


# ---------------------------------------------------------------------------------------
# the launcher
# ---------------------------------------------------------------------------------------


#: a call signature's plan: spec, config, kernel, grid, layouts, scalars, meta, launch (V's
#: transposed copy is made per call, with the descriptors)
Fp8WsPlan = _gluon.ForwardPlan


def flash_mhf_fwd_fp8_ws(
    q: Tensor,
    k: Tensor,
    u: Tensor,
    v: Tensor,
    r: Tensor,
    scales: Tensor | None = None,
    *,
    config: Fp8WsConfig | None = None,
) -> Tensor:
    """o = FlashMHF(q, k, u, v, r) in FP8 arithmetic through the warp-specialised Gluon
    kernel (sm90).

    q: (B, L, H, D) bf16 or fp16 with unit last stride; k/u/v: (Hkv, E, De, D) in
    float8_e4m3fn; r: (B, L, H, E) fp32 or q's dtype (converted to fp32 first:
    routing_fp32); scales: (3, Hkv, E, De) float32, the per-row scales of K, U and V
    (mhfgen.fp8.quantize_experts). Returns o (B, L, H, D), contiguous, in q's dtype.
    ValueError where the variant does not support the problem (see `unsupported`) or
    `config` cannot run it; TypeError without FP8 weights and their scales.
    """
    check_weight_scales(k, scales)
    if scales is None or k.dtype != FP8_STORAGE:
        raise TypeError(f"{KERNEL} takes FP8 weights (float8_e4m3fn) and their scales")
    return _launch(q, k, u, v, sm90.routing_fp32(r), scales, config=config)


def _run(plan: Fp8WsPlan, q, k, u, v, r, scales) -> torch.Tensor:
    """Allocate o (and with splits the workspace) and launch: the per-call part."""
    o = empty(q.shape, q.dtype, q.device)
    if plan.kernel is None:
        return o
    plan.launch.launch_all(arguments(plan, q, k, u, v, r, scales, o))
    return o


def arguments(plan: Fp8WsPlan, q, k, u, v, r, scales, o, vt=None) -> tuple:
    """The kernel's positional arguments for one call: the TMA descriptors of q, k8, u8,
    V8^T (`vt`, default mhfgen.fp8.transposed_v(v)) and o over the 2-D views of the module
    doc, r, the scales' column factors (mhfgen.fp8.kept_column_factors), with
    act_scale='bound' the experts' bounds (mhfgen.fp8.kept_expert_bounds), with pdl the
    k8, u8 and V8^T views and the column factors once more (plain pointers for the L2
    prefetch), with splits the fp32 workspace (splits, tokens, H * D), o and the tickets
    (split_counters), then the plan's scalars; the constexprs and launch options are
    plan.meta. With staged scales the column factors go as a TMA descriptor of their
    (2, Hkv * I) view."""
    B, L, H, D = q.shape
    vt = transposed_v(v) if vt is None else vt
    cols = kept_column_factors(scales)
    bounds = (kept_expert_bounds(k, u, scales),) if plan.config.act_scale == "bound" else ()
    views = (
        sm90.rows_view(q),
        k.contiguous().view(-1, D),
        u.contiguous().view(-1, D),
        vt.view(-1, vt.shape[-1]),
        o.view(-1, H * D),
    )
    # with pdl the weights' own pointers too: the L2 prefetch before griddepcontrol.wait
    prefetch = (*views[1:4], cols) if plan.config.pdl else ()
    if plan.config.staged_scales:
        *descs, cols = descriptors(plan.layouts, *views, cols.view(2, -1))
    else:
        descs = descriptors(plan.layouts, *views)
    split = ()
    if len(plan.grid) == 2:
        tiles, splits = plan.grid
        work = empty((splits, B * L, H * D), torch.float32, q.device)
        split = (work, o, split_counters(tiles * plan.config.consumers, q.device))
    return (*descs, r, cols, *bounds, *prefetch, *split, *plan.scalars)


def _make_plan(q, k, u, v, r, scales, config) -> Fp8WsPlan:
    """Check the inputs, choose and check the config, load the kernel: all but the launch."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    check_weight_scales(k, scales)
    B, L, H, D = q.shape
    Hkv, E, De, _ = k.shape
    spec = KernelSpec(H, Hkv, D, E, De, dtype_name(q.dtype, k.dtype), _device.target(q.device))
    config = _gluon.checked_config(KERNEL, unsupported, config_problems, spec, problem, q, config)
    tokens = B * L
    if tokens == 0:
        return Fp8WsPlan.without_tokens(spec, config)
    grid, scalars = (work_tiles(spec, config, tokens),), (*r.stride(), L, tokens)
    if config.inter_splits > 1:
        splits = split_count(spec, config)
        if splits * tokens * H * D >= INT32_LIMIT:
            raise ValueError(
                f"{KERNEL}: inter_splits={config.inter_splits} at {tokens} tokens needs a "
                f"workspace past 2^31 elements (32-bit offsets); use fewer splits"
            )
        grid, scalars = (grid[0], splits), (tokens * H * D, *scalars)
    return Fp8WsPlan.of(
        spec,
        config,
        load_kernel(spec, config),
        grid,
        descriptor_layouts(spec, config),
        scalars,
        {**constexprs(config), **launch_options(config)},
    )


#: programs of a call, one work tile each (_gluon.forward_work_tiles); with splits each
#: work tile has split_count of them
work_tiles = _gluon.forward_work_tiles


def emulate(q, k, u, v, r, scales, spec: KernelSpec, config: Fp8WsConfig) -> Tensor:
    """What `config` computes on these inputs, emulated in float64 (mhfgen.reference.
    flash_mhf_w8a8 with the config's block_n, splits and act_scale)."""
    from ..reference import flash_mhf_w8a8

    return flash_mhf_w8a8(
        q, k, u, v, r, scales, config.block_n, emulated_splits(spec, config), config.act_scale
    )


def emulated_splits(spec: KernelSpec, config: Fp8WsConfig) -> int:
    """The `splits` argument of mhfgen.reference.flash_mhf_w8a8 that emulates `config`'s
    partials (split_count; 1 without the split reduction)."""
    return split_count(spec, config) if config.inter_splits > 1 else 1


def split_count(spec: KernelSpec, config: Fp8WsConfig) -> int:
    """The splits a launch makes of config.inter_splits over the kv head's weight tiles,
    none left empty (mhfgen.tiling.even_splits; the kernel's _split_tiles deals them)."""
    return even_splits(spec.intermediate // config.block_n, config.inter_splits)


_launch = CachedLaunch(KERNEL, _make_plan, _run)


# ---------------------------------------------------------------------------------------
# compiling for sm90 without a GPU (tests, CI)
# ---------------------------------------------------------------------------------------


def compile_sm90(
    spec: KernelSpec, config: Fp8WsConfig, kernel=None, extra_args: dict | None = None
) -> sm90.CompileReport:
    """Compile the generated kernel for sm90 down to cubin on any machine (no GPU needed):
    the signature is built from host descriptors over small CPU tensors. `kernel` stands
    in for the generated one with the same parameters plus `extra_args` (name -> an
    example value; benchmarks/decode_timeline.py's instrumented copy)."""
    D = spec.head_dim
    rows = max(config.block_m, 16)
    q2 = torch.empty(rows, spec.heads * D, dtype=spec.torch_dtype)
    w2 = torch.empty(spec.kv_heads * spec.intermediate, D, dtype=FP8_STORAGE)
    vt2 = torch.empty(spec.kv_heads * spec.experts * D, spec.expert_dim, dtype=FP8_STORAGE)
    views = (q2, w2, w2, vt2, q2)
    if config.staged_scales:
        views += (torch.empty(2, spec.kv_heads * spec.intermediate, dtype=torch.float32),)
    descs = host_descriptors(descriptors(descriptor_layouts(spec, config), *views))
    split = {}
    if config.inter_splits > 1:
        split = dict(
            WS=torch.empty(1, dtype=torch.float32),
            OUT=torch.empty(1, dtype=spec.torch_dtype),
            COUNTERS=torch.empty(1, dtype=torch.int32),
            stride_ws=1 << 16,
        )
    if config.act_scale == "bound":
        split.update(BOUNDS=torch.empty(1, dtype=torch.float32))
    if config.pdl:
        split.update(KP=w2, UP=w2, VTP=vt2, CP=torch.empty(1, dtype=torch.float32))
    names = ("q_desc", "k_desc", "u_desc", "vt_desc", "o_desc", "cols_desc")
    args = dict(
        zip(names, descs),
        R=torch.empty(1, dtype=torch.float32),
        **({} if config.staged_scales else {"COLS": torch.empty(1, dtype=torch.float32)}),
        **split,
        stride_rb=1 << 20,
        stride_rl=1 << 12,
        stride_rh=64,
        stride_re=1,
        seqlen=1024,
        tokens=1 << 16,
        **(extra_args or {}),
    )
    return sm90.compile_gluon(
        kernel or load_kernel(spec, config), args, constexprs(config), launch_options(config)
    )


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfFwdFp8Ws(_gluon.GluonVariant):
    stem = KERNEL
    op = "fwd"
    Config = Fp8WsConfig
    dtypes = DTYPES
    flop_factor = 6
    outputs = ("o",)
    #: q and the activation tile are quantised to e4m3 in the kernel: its outputs meet
    #: mhfgen.tolerances.FP8_ACTIVATIONS_BAR, and MHFGEN_FP8_ACTIVATIONS=0 leaves it out
    quantises_activations = True
    model = _gluon.GluonModel(
        unsupported, config_problems, shared_memory, registers, default_config, call_problems
    )

    def static_params(self, spec: KernelSpec, config: Fp8WsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfFwdFp8Ws())
