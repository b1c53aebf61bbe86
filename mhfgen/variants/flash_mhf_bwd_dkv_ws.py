"""flash_mhf_bwd_dkv_ws: the warp-specialised Gluon dK/dU/dV backward for Hopper
(flash_mhf_bwd_dkv_ws.py.jinja).

Two consumer warpgroups share a row tile: each computes the scores of 64 of a 128-token
tile's tokens (split 'tokens') or of 32 of the weight tile's 64 rows for a 64-token tile
(split 'rows'), the two exchange P, dS, dA through shared memory, and each accumulates
half of head_dim's columns of dK, dU and dV over the tile's tokens; a one-warp producer
loads q and dO by TMA. sm90, bf16/fp16, D a multiple of 16 from 48 to 128 (tiles padded to
Dp = 64 or 128 columns: mhfgen.kernels.sm90.backward_head_dim_pad; below, D stands for
Dp), expert_dim a multiple of 64. Without token splits it adds nothing by atomics: its
gradients are bitwise reproducible.

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher, sm90 compile check and registry entry; its template and search space
sit beside it.

A program owns one 64-row weight tile (within one expert) of one kv head and walks row
tiles of each query head of the group. Two consumer warpgroups split each tile's scores,
in one of two ways (config.split):

- "tokens": row tiles of 128 tokens; warpgroup w computes S, A, dP (64 x 64) of tokens
  [64 w, 64 w + 64);
- "rows": row tiles of 64 tokens; warpgroup w computes S, A, dP (64 x 32) of weight rows
  [32 w, 32 w + 32). The score MMAs are half as wide, but a ring slot is half the size:
  at D = 128 four slots fit where "tokens" fits two, so the loads of the next tiles
  are in flight while a tile is consumed.

Each writes P, dS, dA (bf16) of its share to shared memory and, once both shares are
there, accumulates head_dim columns [w D / 2, (w + 1) D / 2) of dV += P^T dO,
dK += dS^T q, dU += dA^T q over the tile's tokens. A warpgroup so holds three
(64 x D / 2) fp32 accumulators (96 registers a thread at D = 128) and three score tiles
(96 or 48), where one warpgroup holding whole (64 x D) accumulators would need 288. A
one-warp producer loads K, U, V once and q, dO per tile by TMA into a ring of `stages`
slots. With `joint_scores` it loads a block of K and the same block of U into the two
halves of one shared tile, and S and A come from one wgmma chain, [S | A] = q [K; U]^T, that
reads q once instead of twice (the 'rows' split's N = 32 score MMAs are bound by shared-
memory reads; docs/PERFORMANCE.md). With `joint_grads` ('rows', D = 128) a warpgroup
accumulates the transposes instead, dV^T += dO^T P (D / 2 x 64) and [dK^T | dU^T] +=
q^T [dS | dA] (D / 2 x 128: one chain of N = 128 that reads q once, A read transposed by
the wgmma descriptor), from dS^T over dA^T in one (128, 64) exchange buffer; the
gradients are stored transposed back into (Hkv, I, D).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..kernels import sm90
from ..registry import register
from ..spec import KernelSpec
from ..tiling import cdiv
from . import _gluon

KERNEL = "flash_mhf_bwd_dkv_ws"
#: weight-tile rows per program: the M of the accumulating wgmma
BLOCK_N = sm90.BACKWARD_BLOCK_N
#: tokens per row tile of each split (config.split)
ROW_TILE = {"tokens": 128, "rows": 64}
#: programs per multiprocessor above which a token split only adds atomic traffic


@dataclass(frozen=True)
class BwdDkvWsConfig(_gluon.GluonBackwardConfig):
    """Launch parameters of flash_mhf_bwd_dkv_ws (sigmoid, token_splits, consumer_regs,
    producer_regs: see _gluon.GluonConfig).

    stages:        slots of the q/dO ring (each 2 * block_m * Dp * 2 bytes, Dp the padded
                   head_dim).
    split:         how the two consumers share a row tile's scores: 'tokens' (128-token
                   tiles, 64 tokens each) or 'rows' (64-token tiles, 32 weight rows each).
    joint_scores:  S and A by one wgmma chain of twice the width, [S | A] = q [K; U]^T
                   (K and U rows stacked in one shared tile): q is read from shared
                   memory once for both, not twice.
    joint_grads:   ('rows', Dp = 128) the accumulators transposed, dK and dU as one:
                   [dK^T | dU^T] += q^T [dS | dA] (D / 2 x 2 * 64, one wgmma chain of
                   N = 128 that reads q once) and dV^T += dO^T P (N = 64), where
                   dK += dS^T q, dU += dA^T q and dV += P^T dO are three chains of N = D / 2.
    """

    variant = KERNEL

    stages: int = 2
    split: str = "tokens"
    joint_scores: bool = False
    joint_grads: bool = False
    sigmoid: str = "tanh"
    token_splits: int = 1
    consumer_regs: int = 240
    producer_regs: int = 24

    #: fields added after configs of this variant were stored: a stored or imported config
    #: without them means these values (whose generated code is the code it was tuned with)
    added_fields = {"split": "tokens", "joint_scores": False, "joint_grads": False}

    choices = {"stages": range(2, 9), "split": tuple(ROW_TILE)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.joint_grads and self.split != "rows":
            raise ValueError(f"{KERNEL} config: joint_grads needs split='rows'")

    @property
    def block_m(self) -> int:
        """Tokens per row tile."""
        return ROW_TILE[self.split]

    @property
    def score_cols(self) -> int:
        """Weight rows of one consumer's score tiles (their N)."""
        return BLOCK_N if self.split == "tokens" else BLOCK_N // 2

    def describe(self) -> str:
        text = self.describe_regs()
        if self.split != "tokens":
            text += f" {self.split}"
        if self.joint_scores:
            text += " joint"
        if self.joint_grads:
            text += " jgrads"
        if self.token_splits > 1:
            text += f" ts{self.token_splits}"
        return text + self.describe_sigmoid()


unsupported = sm90.backward_unsupported


def shared_memory(spec: KernelSpec, config: BwdDkvWsConfig) -> int:
    """Bytes: the q/dO ring, K/U/V, the exchange tiles (P, dS, dA of a row tile, bf16),
    the mbarriers and 1 KiB of compiler scratch; head_dim padded
    (sm90.backward_head_dim_pad)."""
    d = sm90.backward_head_dim_pad(spec)
    ring = config.stages * 2 * config.block_m * d * 2
    weights = 3 * BLOCK_N * d * 2
    exchange = 3 * config.block_m * BLOCK_N * 2
    return ring + weights + exchange + 8 * (2 * config.stages + 3) + 1024


def config_problems(spec: KernelSpec, config: BwdDkvWsConfig) -> list[str]:
    """What of `config` does not fit an SM: shared memory, and the register split
    (the first consumer needs its accumulators and score tiles: consumer_registers)."""
    problems = config.resource_problems(
        shared_memory(spec, config), consumer_registers(spec, config)
    )
    if config.joint_grads and sm90.backward_head_dim_pad(spec) != 128:
        problems.append(
            f"joint_grads needs head_dim 128 or one padded to it (the transposed "
            f"accumulators' M is D / 2, a warpgroup's wgmma takes 64); head_dim is "
            f"{spec.head_dim}"
        )
    return problems


def consumer_registers(spec: KernelSpec, config: BwdDkvWsConfig) -> int:
    """fp32 registers a consumer thread holds in tiles: three (64 x Dp / 2) accumulators
    (Dp the padded head_dim) and S, A, dP (64 x score_cols), over 128 threads (192 at
    Dp = 128, 'tokens')."""
    d = sm90.backward_head_dim_pad(spec)
    return (3 * BLOCK_N * d // 2 + 3 * 64 * config.score_cols) // 128


def default_config(spec: KernelSpec, tokens: int, sm_count: int) -> BwdDkvWsConfig:
    """The split and ring depth measured best on an H200 (docs/PERFORMANCE.md): at
    D = 128 'rows' with 3 slots (1.33x 'tokens' with the 2 slots that fit it) and joint
    scores (1.05-1.07x without), and without grouped query heads joint transposed
    gradients with 4 slots (1.09-1.10x 'rows' s3 joint; with 4 query heads per kv head
    0.86x, so grouped shapes keep s3); at D = 64 'tokens' with 3 and separate scores
    (joint is 1.16x slower there); tanh; token splits by wave_token_splits. A padded
    head_dim takes its padded width's choice (D = 96 that of D = 128)."""
    d = sm90.backward_head_dim_pad(spec)
    split = "tokens" if d <= 64 else "rows"
    grads = split == "rows" and d == 128 and spec.group == 1
    programs = spec.kv_heads * spec.intermediate // BLOCK_N
    blocks = spec.group * cdiv(max(1, tokens), ROW_TILE[split])
    return BwdDkvWsConfig(
        stages=4 if grads else 3,
        split=split,
        token_splits=_gluon.wave_token_splits(programs, blocks, sm_count),
        joint_scores=split == "rows",
        joint_grads=grads,
    )


def static_params(spec: KernelSpec, config: BwdDkvWsConfig) -> dict:
    """sigmoid, token_split, and rows_split, joint_scores, joint_grads and head_dim_pad only
    where set: a config without them renders the code it rendered before those knobs
    existed, so its stored winners stay current."""
    params = {
        "sigmoid": config.sigmoid,
        "token_split": config.token_splits > 1,
        **sm90.backward_pad_params(spec),
    }
    if config.split == "rows":
        params["rows_split"] = True
    if config.joint_scores:
        params["joint_scores"] = True
    if config.joint_grads:
        params["joint_grads"] = True
    return params


def smem_layouts(spec: KernelSpec, config: BwdDkvWsConfig) -> dict:
    """The shared layouts: of the descriptors (q/dO blocks of 64 tokens x Dp / 2; K/U/V
    blocks of score_cols rows x Dp / 2, Dp the padded head_dim) and of the exchange tiles
    (EX_LAYOUT: bf16 (64, 64): tokens x rows for 'tokens', rows x tokens for 'rows')."""
    half = sm90.backward_head_dim_pad(spec) // 2
    return {
        "rows": sm90.nvmma_block(spec, 64, half),
        "weights": sm90.nvmma_block(spec, config.score_cols, half),
        "EX_LAYOUT": sm90.nvmma_block(spec, 64, BLOCK_N)[1],
    }


def constexprs(spec: KernelSpec, config: BwdDkvWsConfig) -> dict:
    return dict(
        BLOCK_N=BLOCK_N,
        STAGES=config.stages,
        EX_LAYOUT=smem_layouts(spec, config)["EX_LAYOUT"],
        **config.register_constexprs(),
    )


#: what the shared dK/dU/dV launch path asks of this variant (mhfgen.variants._gluon)
GLUON_DKV = _gluon.GluonDkv(KERNEL, unsupported, config_problems, smem_layouts, constexprs)
_launch = GLUON_DKV.launcher()
#: compile the generated kernel for sm90 down to cubin on any machine (no GPU)
compile_sm90 = GLUON_DKV.compile_sm90


def flash_mhf_bwd_dkv_ws(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, Tensor, Tensor]:
    """(dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D) through the
    warp-specialised Gluon kernel (sm90); each (Hkv, E, De, D), contiguous, in k's dtype.
    `config`: a BwdDkvWsConfig, or None for the dispatcher's. ValueError where the variant
    does not support the problem."""
    return _launch(q, k, u, v, sm90.routing_fp32(r), do, config=config)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfBwdDkvWs(_gluon.GluonDkvVariant):
    stem = "flash_mhf_bwd_dkv_ws"
    Config = BwdDkvWsConfig
    model = GLUON_DKV.model(shared_memory, consumer_registers, default_config)

    def static_params(self, spec: KernelSpec, config: BwdDkvWsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfBwdDkvWs())
