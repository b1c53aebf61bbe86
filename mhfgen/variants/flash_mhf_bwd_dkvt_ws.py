"""flash_mhf_bwd_dkvt_ws: the warp-specialised Gluon dK/dU/dV backward for Hopper whose
consumer warpgroups own weight rows end to end (flash_mhf_bwd_dkvt_ws.py.jinja).

Each of two consumer warpgroups owns wg_rows of the program's 2 * wg_rows weight rows:
it computes their scores for a 64-token row tile ([S | A] by one wgmma chain, and dP),
the element-wise math, and accumulates the transposed gradients [dK^T | dU^T] and dV^T
over all of head_dim; the two share only the q/dO ring a one-warp TMA producer fills.
sm90, bf16/fp16, D a multiple of 16 from 48 to 128 (padded to Dp = 64 or 128 columns, one
or two 64-column chunks: mhfgen.kernels.sm90.backward_head_dim_pad), expert_dim a multiple
of the weight tile. Without token splits it adds nothing by atomics: its gradients are
bitwise reproducible.

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher, sm90 compile check and registry entry; its template and search space
sit beside it.

A program owns a weight tile of 2 * wg_rows rows (within one expert) of one kv head and
walks 64-token row tiles of each query head of the group. Each of its two consumer
warpgroups owns wg_rows of those rows from end to end: per row tile it computes

    [S | A] = q [K_w; U_w]^T   (64 x 2 wg_rows, one wgmma chain)
    dP = dO V_w^T              (64 x wg_rows)

the element-wise math (P, dS, dA as in flash_mhf_bwd_dkv_ws), writes P and [dS | dA]
(bf16, tokens x rows) to its own shared tiles, and accumulates over all of head_dim, in
64-column chunks (M = 64):

    [dK_w^T | dU_w^T] += q^T [dS | dA]   (64 x 2 wg_rows per chunk)
    dV_w^T += dO^T P                      (64 x wg_rows per chunk)

with q^T and dO^T read transposed from the ring by the wgmma descriptor. The gradients are
stored transposed back into (Hkv, I, D).

Where flash_mhf_bwd_dkv_ws splits head_dim between the consumers (N = D / 2 = 32 at
D = 64: three accumulating chains bound by shared-memory reads, docs/PERFORMANCE.md) and
makes them meet at an exchange every tile, here the widest accumulating chain is
N = 2 wg_rows = 64 or 128 at D = 64 and the consumers share only the q/dO ring: each
one's element-wise math can overlap the other's MMAs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from ..kernels import sm90
from ..registry import register
from ..spec import KernelSpec
from ..tiling import cdiv, even_tiles
from . import _gluon

KERNEL = "flash_mhf_bwd_dkvt_ws"
#: tokens per row tile: the M of the score wgmma, the K of the accumulating ones
ROW_TILE = _gluon.ROW_OWNER_TILE
#: head_dim columns per chunk: the M of an accumulating wgmma
CHUNK = _gluon.ROW_OWNER_CHUNK


@dataclass(frozen=True)
class BwdDkvtWsConfig(_gluon.GluonBackwardConfig):
    """Launch parameters of flash_mhf_bwd_dkvt_ws (sigmoid, token_splits, consumer_regs,
    producer_regs: see _gluon.GluonConfig).

    stages:        slots of the q/dO ring (each 2 * 64 * Dp * 2 bytes, Dp the padded
                   head_dim).
    wg_rows:       weight rows each consumer warpgroup owns (32 or 64): a program's weight
                   tile is 2 * wg_rows rows; its score tiles are 64 x wg_rows.
    """

    variant = KERNEL

    stages: int = 4
    wg_rows: int = 32
    sigmoid: str = "tanh"
    token_splits: int = 1
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

    def describe(self) -> str:
        text = self.describe_regs() + f" wg{self.wg_rows}"
        if self.token_splits > 1:
            text += f" ts{self.token_splits}"
        return text + self.describe_sigmoid()


def unsupported(spec: KernelSpec, tokens: int | None = None) -> str | None:
    """What the Gluon backward kernels share (sm90, bf16/fp16, head_dim a multiple of 16
    from 48 to 128, expert width a multiple of 64)."""
    return sm90.backward_unsupported(spec, tokens)


def shared_memory(spec: KernelSpec, config: BwdDkvtWsConfig) -> int:
    """Bytes: the q/dO ring, K/U/V of the program's rows, each consumer's P and [dS | dA]
    tiles (bf16), the mbarriers and 1 KiB of compiler scratch; head_dim padded
    (sm90.backward_head_dim_pad)."""
    d = sm90.backward_head_dim_pad(spec)
    ring = config.stages * 2 * ROW_TILE * d * 2
    weights = 3 * config.block_n * d * 2
    exchange = 2 * ROW_TILE * 3 * config.wg_rows * 2
    return ring + weights + exchange + 8 * (2 * config.stages + 1) + 1024


def consumer_registers(spec: KernelSpec, config: BwdDkvtWsConfig) -> int:
    """fp32 registers a consumer thread holds in tiles: the accumulators [dK^T | dU^T] and
    dV^T (Dp x 3 wg_rows, Dp the padded head_dim) and the scores [S | A] and dP
    (64 x 3 wg_rows), over 128 threads (96 at Dp = 64 with 32 rows, 192 with 64)."""
    return 3 * config.wg_rows * (sm90.backward_head_dim_pad(spec) + ROW_TILE) // 128


def config_problems(spec: KernelSpec, config: BwdDkvtWsConfig) -> list[str]:
    """What of `config` does not fit the spec or an SM: weight tiles that cross an expert,
    shared memory, and the register split (the first consumer needs its accumulators and
    score tiles: consumer_registers)."""
    return _gluon.row_owner_problems(
        spec, config, shared_memory(spec, config), consumer_registers(spec, config)
    )


def preferred(spec: KernelSpec) -> bool:
    """Whether the heuristic should take this kernel before flash_mhf_bwd_dkv_ws: at
    head_dim 64 (64 rows a warpgroup, 4 slots: 1.18x its 'tokens' split on an H200) and
    with grouped query heads (1.05x its 'rows' s3 joint with 4 query heads per kv head);
    not at D = 128 without grouping, where its joint_grads schedule is as fast
    (docs/PERFORMANCE.md). A padded head_dim counts as its padded width."""
    return sm90.backward_head_dim_pad(spec) == 64 or spec.group > 1


def default_config(spec: KernelSpec, tokens: int, sm_count: int) -> BwdDkvtWsConfig:
    """The rows per warpgroup and ring depth measured best on an H200: 64 rows and 6
    slots at D = 64 where the expert width takes 128-row tiles (1.02x 4 slots, 1.01x 8),
    else 32 rows (3 slots at D = 128, 4 at D = 64); token splits by wave_token_splits
    (none from two waves of weight tiles up: dQ/dR fills the last one). A padded head_dim
    takes its padded width's choice."""
    d = sm90.backward_head_dim_pad(spec)
    wide = d == 64 and even_tiles(spec, 128)
    stages = 6 if wide else 3 if d > 64 else 4
    config = BwdDkvtWsConfig(stages=stages, wg_rows=64 if wide else 32)
    programs = spec.kv_heads * spec.intermediate // config.block_n
    blocks = spec.group * cdiv(max(1, tokens), ROW_TILE)
    return dataclasses.replace(
        config, token_splits=_gluon.wave_token_splits(programs, blocks, sm_count)
    )


def static_params(spec: KernelSpec, config: BwdDkvtWsConfig) -> dict:
    """sigmoid, token_split and, only where head_dim is padded, head_dim_pad (the rows per
    warpgroup stay a constexpr)."""
    return {
        "sigmoid": config.sigmoid,
        "token_split": config.token_splits > 1,
        **sm90.backward_pad_params(spec),
    }


#: the shared layouts and constexprs of the row-owning backward kernels
smem_layouts = _gluon.row_owner_layouts
constexprs = _gluon.row_owner_constexprs


#: what the shared dK/dU/dV launch path asks of this variant (mhfgen.variants._gluon)
GLUON_DKV = _gluon.GluonDkv(KERNEL, unsupported, config_problems, smem_layouts, constexprs)
_launch = GLUON_DKV.launcher()
#: compile the generated kernel for sm90 down to cubin on any machine (no GPU)
compile_sm90 = GLUON_DKV.compile_sm90


def flash_mhf_bwd_dkvt_ws(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, Tensor, Tensor]:
    """(dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D) through the
    row-owning Gluon kernel (sm90); each (Hkv, E, De, D), contiguous, in k's dtype.
    `config`: a BwdDkvtWsConfig, or None for the dispatcher's. ValueError where the
    variant does not support the problem."""
    return _launch(q, k, u, v, sm90.routing_fp32(r), do, config=config)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfBwdDkvtWs(_gluon.GluonDkvVariant):
    stem = "flash_mhf_bwd_dkvt_ws"
    Config = BwdDkvtWsConfig
    preference = 20  # after flash_mhf_bwd_dkv_ws, before flash_mhf_bwd_dkv; but see rank
    model = GLUON_DKV.model(shared_memory, consumer_registers, default_config)

    def rank(self, spec: KernelSpec) -> int:
        """First (before flash_mhf_bwd_dkv_ws) at head_dim 64 and with grouped query heads,
        where it measured faster on an H200; after it elsewhere (docs/PERFORMANCE.md)."""
        return 5 if preferred(spec) else self.preference

    def static_params(self, spec: KernelSpec, config: BwdDkvtWsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfBwdDkvtWs())
