"""flash_mhf_bwdt_ws: the warp-specialised Gluon one-pass backward for Hopper whose consumer
warpgroups own weight rows end to end (flash_mhf_bwdt_ws.py.jinja).

The schedule of flash_mhf_bwd_dkvt_ws with dq and dr added, so one pass computes every
gradient from one recomputation of the scores: 8 GEMM units per row tile, where the split
backward (flash_mhf_bwd_dq_ws beside a dK/dU/dV kernel) runs 11. sm90, bf16/fp16, head_dim
a multiple of 16 from 48 to 128 (padded to Dp = 64 or 128 columns, one or two 64-column
chunks: mhfgen.kernels.sm90.backward_head_dim_pad), expert_dim a multiple of the weight
tile.

This module holds the variant whole: its config type, support checks, resource model,
heuristic, sm90 compile check and registry entry; its template and search space sit beside
it. The chunking of kv heads per launch and the dq/dr/dK/dU/dV workspaces are the other
one-pass variants' (mhfgen.kernels.bwd_chunks, mhfgen.workspace).

A program owns a weight tile of 2 * wg_rows rows (within one expert) of one kv head and
walks 64-token row tiles of each query head of the group. Each of its two consumer
warpgroups w owns wg_rows of those rows: per row tile it computes

    [S | A] = q [K_w; U_w]^T   (64 x 2 wg_rows, one wgmma chain)
    dP = dO V_w^T              (64 x wg_rows)

the element-wise math, its rows' share of dr (an fp32 atomic add per token), writes P and
[dS | dA] (bf16, tokens x rows) to its own shared tiles, and accumulates over all of
head_dim, in 64-column chunks c:

    [dK_w^T | dU_w^T][c] += q[:, c]^T [dS | dA]_w   (64 x 2 wg_rows)
    dV_w^T[c] += dO[:, c]^T P_w                      (64 x wg_rows)

and its share of the row tile's dq, added by vector reductions to an fp32 buffer
(red.global.add.v4.f32 with dq_vec, else v2 from the accumulator's layout). Where Dp = 128
that share is head_dim chunk w over the program's rows, its own [dS | dA] from registers
and the other warpgroup's from that one's exchange tile:

    dq[:, w] = [dS | dA]_0 [K_0; U_0][:, w] + [dS | dA]_1 [K_1; U_1][:, w]   (64 x 64)

and the two warpgroups meet once a tile: each waits for the other's exchange tile before
its dq MMAs, and for the other's dq MMAs before it overwrites its own. Where Dp = 64 it
is all of dq over its own rows, [dS | dA]_w [K_w; U_w] (64 x 64), and the two never
wait for each other. dq's partial sums per element are I / (2 wg_rows) per kv head at
Dp = 128 (88 at the 1.3B preset) and I / wg_rows at Dp = 64 (88 at H = 16, D = 64,
I = 2816 with the heuristic's 32 rows a warpgroup): the price of the single pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..kernels import sm90
from ..registry import register
from ..spec import KernelSpec
from ..tiling import cdiv
from ..workspace import fit_launches
from . import _gluon

KERNEL = "flash_mhf_bwdt_ws"
#: tokens per row tile: the M of the score and dq wgmma, the K of the accumulating ones
ROW_TILE = _gluon.ROW_OWNER_TILE
#: head_dim columns per chunk: the M of an accumulating wgmma, the N of dq's
CHUNK = _gluon.ROW_OWNER_CHUNK


@dataclass(frozen=True)
class BwdtWsConfig(_gluon.GluonBackwardConfig):
    """Launch parameters of flash_mhf_bwdt_ws (sigmoid, token_splits, consumer_regs,
    producer_regs: see _gluon.GluonConfig).

    stages:        slots of the q/dO ring (each 2 * 64 * Dp * 2 bytes, Dp the padded
                   head_dim).
    wg_rows:       weight rows each consumer warpgroup owns: a program's weight tile is
                   2 * wg_rows rows; its score tiles are 64 x wg_rows (64 fits the
                   registers at Dp = 64 only).
    head_chunk:    kv heads per launch (the dq workspace; mhfgen.workspace).
    dq_vec:        dq's reductions four head_dim elements at a time
                   (red.global.add.v4.f32) after a layout change through shared memory
                   (32 KiB more of it), instead of two at a time (red.global.add.v2.f32)
                   from the accumulator's layout. The heuristic takes it: without it,
                   ptxas serialises every wgmma of the kernel at grouped query heads
                   without token splits (tests/test_gluon_bwdt_ws.py).
    """

    variant = KERNEL

    stages: int = 2
    wg_rows: int = 32
    sigmoid: str = "tanh"
    token_splits: int = 1
    head_chunk: int = 1
    dq_vec: bool = True
    consumer_regs: int = 240
    producer_regs: int = 24

    choices = {"stages": range(2, 9), "wg_rows": (32, 64)}

    @property
    def block_n(self) -> int:
        """Weight rows per program."""
        return 2 * self.wg_rows

    @property
    def block_m(self) -> int:
        """Tokens per row tile."""
        return ROW_TILE

    @property
    def dr_rows(self) -> int:
        """Weight rows whose dr partial sum one atomic add carries: a warpgroup's."""
        return self.wg_rows

    def describe(self) -> str:
        text = self.describe_regs() + f" wg{self.wg_rows}"
        if self.token_splits > 1:
            text += f" ts{self.token_splits}"
        if self.dq_vec:
            text += " vec"
        return text + self.describe_sigmoid() + f" hc{self.head_chunk}"


#: what the Gluon backward kernels share (sm90, bf16/fp16, head_dim a multiple of 16 from
#: 48 to 128, expert width a multiple of 64)
unsupported = sm90.backward_unsupported


def shared_memory(spec: KernelSpec, config: BwdtWsConfig) -> int:
    """Bytes: the q/dO ring, K/U/V of the program's rows, each consumer's P and [dS | dA]
    tiles (bf16), with dq_vec each consumer's dq tile's layout change (fp32), the
    mbarriers (two more where the warpgroups share dq's chunks) and 1 KiB of compiler
    scratch; head_dim padded (sm90.backward_head_dim_pad)."""
    d = sm90.backward_head_dim_pad(spec)
    ring = config.stages * 2 * ROW_TILE * d * 2
    weights = 3 * config.block_n * d * 2
    exchange = 2 * ROW_TILE * 3 * config.wg_rows * 2
    relayout = 2 * ROW_TILE * CHUNK * 4 if config.dq_vec else 0
    barriers = 8 * (2 * config.stages + 1 + (2 if d > CHUNK else 0))
    return ring + weights + exchange + relayout + barriers + 1024


def consumer_registers(spec: KernelSpec, config: BwdtWsConfig) -> int:
    """fp32 registers a consumer thread holds in tiles: the accumulators [dK^T | dU^T]
    and dV^T (Dp x 3 wg_rows), the scores [S | A] and dP (64 x 3 wg_rows) and a dq chunk
    (64 x 64), over 128 threads (Dp = 128: 176 with 32 rows, 320 with 64; Dp = 64: 128
    and 224)."""
    d = sm90.backward_head_dim_pad(spec)
    return (3 * config.wg_rows * (d + ROW_TILE) + ROW_TILE * CHUNK) // 128


def config_problems(spec: KernelSpec, config: BwdtWsConfig) -> list[str]:
    """What of `config` does not fit the spec or an SM: weight tiles that cross an expert,
    shared memory, and the register split (the first consumer needs its accumulators, score
    tiles and dq chunk: consumer_registers)."""
    return _gluon.row_owner_problems(
        spec, config, shared_memory(spec, config), consumer_registers(spec, config)
    )


def default_config(spec: KernelSpec, tokens: int, sm_count: int) -> BwdtWsConfig:
    """32 rows a warpgroup, v4 dq reductions and tanh, a 2-slot ring at Dp = 128 and 4 at
    Dp = 64 (64 rows there spill 300-800 bytes in their sm90 compiles; 32 spill none);
    kv heads per launch and token splits as the other one-pass backwards' heuristics pick
    them (mhfgen.workspace.fit_launches). On an H100 the split backward was faster than
    every config tried (1.3B at 2048 tokens, docs/PERFORMANCE.md): dispatch runs it only
    where the tuner has stored a winner that beats the split pair."""
    config = BwdtWsConfig(stages=2 if sm90.backward_head_dim_pad(spec) > CHUNK else 4)
    return fit_launches(
        spec,
        config,
        tokens,
        sm_count,
        spec.intermediate // config.block_n,
        cdiv(max(1, tokens), 4 * ROW_TILE),
    )


def static_params(spec: KernelSpec, config: BwdtWsConfig) -> dict:
    """sigmoid, token_split, dq_vec and, only where head_dim is padded, head_dim_pad (the
    rows per warpgroup stay a constexpr)."""
    return {
        "sigmoid": config.sigmoid,
        "token_split": config.token_splits > 1,
        "dq_vec": config.dq_vec,
        **sm90.backward_pad_params(spec),
    }


#: the shared layouts and constexprs of the row-owning backward kernels
smem_layouts = _gluon.row_owner_layouts
constexprs = _gluon.row_owner_constexprs


#: what the shared one-pass launch path asks of this variant (mhfgen.variants._gluon)
GLUON = _gluon.GluonOnePass(KERNEL, unsupported, config_problems, smem_layouts, constexprs)
#: compile the generated kernel for sm90 down to cubin on any machine (no GPU)
compile_sm90 = GLUON.compile_sm90
_launch = GLUON.launcher()


def flash_mhf_bwdt_ws(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, ...]:
    """(dq, dr, dk, du, dv) of FlashMHF through the row-owning Gluon one-pass kernel
    (sm90); shapes and dtypes as mhfgen.variants.flash_mhf_bwd_fused's. `config`: a
    BwdtWsConfig, or None for the dispatcher's. ValueError where the variant does not
    support the problem."""
    dq, dr, dk, du, dv = _launch(q, k, u, v, sm90.routing_fp32(r), do, config=config)
    return dq, dr.to(r.dtype), dk, du, dv  # the kernel reads and writes r and dr in fp32


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfBwdtWs(_gluon.GluonVariant):
    stem = "flash_mhf_bwdt_ws"
    op = "bwd"
    Config = BwdtWsConfig
    preference = 12  # after flash_mhf_bwd_ws: slower than the split pair on an H100
    flop_factor = 16
    outputs = ("dq", "dr", "dk", "du", "dv")
    takes_grad = True
    model = GLUON.model(shared_memory, consumer_registers, default_config)

    def static_params(self, spec: KernelSpec, config: BwdtWsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfBwdtWs())
