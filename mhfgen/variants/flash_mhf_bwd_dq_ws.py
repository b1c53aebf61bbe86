"""flash_mhf_bwd_dq_ws: the warp-specialised Gluon dQ/dR backward for Hopper
(flash_mhf_bwd_dq_ws.py.jinja).

Two consumer warpgroups of 64 rows each walk a kv head's weight tiles, recomputing S, A
and dP and accumulating dq in registers; a one-warp producer loads q and dO once and
K, U, V per tile by TMA. sm90, bf16/fp16, D a multiple of 16 from 48 to 128 (tiles padded
to Dp = 64 or 128 columns: mhfgen.kernels.sm90.backward_head_dim_pad), expert_dim a
multiple of 64. It adds nothing by atomics: its gradients are bitwise reproducible.

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher, sm90 compile check and registry entry; its template and search space
sit beside it.

A program owns 128 tokens of one query head: two consumer warpgroups of 64 rows each walk
the kv head's weight tiles (64 rows of the intermediate dimension each) independently,
recomputing S, A and dP per tile and accumulating dq (64 x Dp, fp32) in registers and dr
per expert; a one-warp producer loads q and dO once and K, U, V per tile by TMA into a
ring of `stages` slots that both consumers read. It is the forward's structure with two
more MMAs per tile, and like the forward it writes every output once, with no atomics.
With `joint_scores` a ring slot holds K over U in one (128, Dp) tile and S and A come from
one wgmma of twice the width, [S | A] = q [K; U]^T, reading q once instead of twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import codegen
from ..kernels import sm90
from ..kernels.buffers import contiguous_strides, weights_need_copy
from ..kernels.grad_plans import DqPlan, run_dq_plan
from ..registry import register
from ..spec import KernelSpec
from ..tiling import cdiv
from . import _gluon

KERNEL = "flash_mhf_bwd_dq_ws"
#: weight-tile rows per step: the N of the score MMAs, the K of dq's
BLOCK_N = sm90.BACKWARD_BLOCK_N
#: tokens per program: 64 per consumer warpgroup
BLOCK_M = 128


@dataclass(frozen=True)
class BwdDqWsConfig(_gluon.GluonBackwardConfig):
    """Launch parameters of flash_mhf_bwd_dq_ws (sigmoid, consumer_regs, producer_regs:
    see _gluon.GluonConfig).

    stages:        slots of the K/U/V ring (each 3 * 64 * Dp * 2 bytes, Dp the padded
                   head_dim).
    joint_scores:  S and A by one wgmma of twice the width, [S | A] = q [K; U]^T (K and U
                   of a weight tile stacked in one ring tile): q is read from shared
                   memory once for both, not twice.
    wait_dq:       dq's two MMAs complete within their weight tile (the tile's slot goes
                   back to the producer then). Off, they stay in flight into the next
                   tile, and their register A operands leave ptxas too few registers for
                   asynchronous wgmma: it serialises every wgmma of the kernel
                   (sm90.ptxas_report says so at compile time).
    early_scores:  (with wait_dq) the next weight tile's score MMAs are issued right after
                   this tile's dq MMAs, before waiting for those: the scores run while
                   dq's MMAs finish and the next tile's element-wise math can start as
                   soon as they are done. Off, each tile issues its own scores and waits
                   for them. One tile's scores are live at a time either way. On an
                   H100 its results were bitwise those without it and it ran 0.94-0.99x
                   as fast (docs/PERFORMANCE.md), so the search space leaves it out;
                   benchmarks/bwd_dq_ws_check.py verifies and times it.
    """

    variant = KERNEL

    stages: int = 3
    sigmoid: str = "tanh"
    joint_scores: bool = False
    consumer_regs: int = 240
    producer_regs: int = 24
    wait_dq: bool = True
    early_scores: bool = False

    #: fields added after configs of this variant were stored: a stored or imported config
    #: without them means these values (whose generated code is the code it was tuned with)
    added_fields = {"joint_scores": False, "wait_dq": False, "early_scores": False}

    choices = {"stages": range(2, 7)}

    @property
    def block_m(self) -> int:
        return BLOCK_M

    def describe(self) -> str:
        joint = " joint" if self.joint_scores else ""
        pending = "" if self.wait_dq else " dq-pending"
        early = " early" if self.early_scores else ""
        return self.describe_regs() + joint + pending + early + self.describe_sigmoid()


unsupported = sm90.backward_unsupported


def shared_memory(spec: KernelSpec, config: BwdDqWsConfig) -> int:
    """Bytes: q and dO of both consumers, the K/U/V ring, the mbarriers and 1 KiB of
    compiler scratch (head_dim padded: sm90.backward_head_dim_pad)."""
    d = sm90.backward_head_dim_pad(spec)
    rows = 2 * BLOCK_M * d * 2
    ring = config.stages * 3 * BLOCK_N * d * 2
    return rows + ring + 8 * (2 * config.stages + 1) + 1024


def config_problems(spec: KernelSpec, config: BwdDqWsConfig) -> list[str]:
    """What of `config` does not fit an SM: shared memory, and the register split
    (the first consumer needs 192 registers a thread), and early_scores without wait_dq
    (dq's MMAs in flight into the next tile leave no registers for its scores)."""
    problems = config.resource_problems(shared_memory(spec, config), 192)
    if config.early_scores and not config.wait_dq:
        problems.append("early_scores needs wait_dq")
    return problems


def registers(spec: KernelSpec, config: BwdDqWsConfig) -> float:
    """fp32 values a consumer thread keeps live: dq (64 x Dp, the padded head_dim) and S,
    A, dP (64 x 64), over 128 threads."""
    return (64 * sm90.backward_head_dim_pad(spec) + 3 * 64 * BLOCK_N) / 128


def default_config(spec: KernelSpec, tokens: int, sm_count: int) -> BwdDqWsConfig:
    """The deepest ring of up to 4 slots that fits (3 at D = 128), tanh, joint scores
    (measured on an H200 at 16384 tokens: 1.12x separate ones on 1.3B, 1.11x on 370M,
    1.07x at D = 64; docs/PERFORMANCE.md)."""
    for stages in (4, 3, 2):
        config = BwdDqWsConfig(stages=stages, joint_scores=True)
        if not config_problems(spec, config):
            return config
    return BwdDqWsConfig(stages=2, joint_scores=True)


def static_params(spec: KernelSpec, config: BwdDqWsConfig) -> dict:
    """sigmoid, and joint_scores, wait_dq, early_scores and head_dim_pad only where set: a
    config without them renders the code it rendered before the knobs existed, so its
    stored winners stay current."""
    params = {"sigmoid": config.sigmoid, **sm90.backward_pad_params(spec)}
    if config.joint_scores:
        params["joint_scores"] = True
    if config.wait_dq:
        params["wait_dq"] = True
    if config.early_scores:
        params["early_scores"] = True
    return params


def smem_layouts(spec: KernelSpec, config: BwdDqWsConfig) -> dict:
    """The descriptors' shared layouts (the same for every config): q/dO blocks of (64
    tokens, Dp), K/U/V blocks of (64 rows, Dp), Dp the padded head_dim."""
    d = sm90.backward_head_dim_pad(spec)
    return {
        "rows": sm90.nvmma_block(spec, BLOCK_M // 2, d),
        "weights": sm90.nvmma_block(spec, BLOCK_N, d),
    }


def constexprs(spec: KernelSpec, config: BwdDqWsConfig) -> dict:
    return dict(
        BLOCK_N=BLOCK_N,
        STAGES=config.stages,
        **config.register_constexprs(),
    )


#: what the shared Gluon backward launch path asks of this variant (mhfgen.variants._gluon)
GLUON = _gluon.GluonBackward(KERNEL, unsupported, config_problems, smem_layouts, constexprs)


def flash_mhf_bwd_dq_ws(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, Tensor]:
    """(dq, dr) of FlashMHF for the output gradient `do` (B, L, H, D) through the
    warp-specialised Gluon kernel (sm90). dq: (B, L, H, D) contiguous in q's dtype; dr:
    (B, L, H, E) contiguous in r's dtype. `config`: a BwdDqWsConfig, or None for the
    dispatcher's. ValueError where the variant does not support the problem."""
    dq, dr = _launch(q, k, u, v, sm90.routing_fp32(r), do, config=config)
    return dq, dr.to(r.dtype)  # the kernel reads and writes r and dr in fp32


def _make_plan(q, k, u, v, r, do, config) -> DqPlan:
    """Check the inputs and the config, load the kernel: everything but the launch."""
    tokens, spec, config, copy_do = GLUON.checked(q, k, u, v, r, do, config)
    B, L, H, D = q.shape
    copy = weights_need_copy(k, u, v)
    if tokens == 0:
        return DqPlan(None, (B, L, H, D), tuple(r.shape), copy, copy_do)
    scalars = (*r.stride(), H * D, D, *contiguous_strides(tuple(r.shape)), L, tokens)
    kernel = codegen.load_kernel(KERNEL, spec, config)
    launch = GLUON.launch(kernel, spec, config, (cdiv(tokens, BLOCK_M), H), scalars)
    return DqPlan(launch, (B, L, H, D), tuple(r.shape), copy, copy_do)


def compile_sm90(spec: KernelSpec, config: BwdDqWsConfig) -> sm90.CompileReport:
    """Compile the generated kernel for sm90 down to cubin on any machine (no GPU)."""
    return GLUON.compile_kernel(spec, config, BLOCK_M, DQ=spec.torch_dtype, DR=torch.float32)


_launch = GLUON.launcher(_make_plan, run_dq_plan)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfBwdDqWs(_gluon.GluonVariant):
    stem = "flash_mhf_bwd_dq_ws"
    op = "bwd_dq"
    Config = BwdDqWsConfig
    flop_factor = 10  # S, A, dP recomputed; dQ from dS and dA
    outputs = ("dq", "dr")
    takes_grad = True
    model = GLUON.model(shared_memory, registers, default_config)

    def static_params(self, spec: KernelSpec, config: BwdDqWsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfBwdDqWs())
