"""flash_mhf_bwd_ws: the warp-specialised Gluon one-pass backward for Hopper
(flash_mhf_bwd_ws.py.jinja).

Two consumer warpgroups split the 8 MMAs of each row tile 4 + 4 (A: S^T, A^T, dK, dU and
the element-wise math; B: dP^T, dV, dq) and swap dP^T and P^T/dS^T/dA^T through shared
memory; a one-warp producer loads q and dO by TMA. sm90, bf16/fp16, D a multiple of 16
from 48 to 128 (tiles padded to Dp = 64 or 128 columns: mhfgen.kernels.sm90.
backward_head_dim_pad), expert_dim a multiple of 64. The dq workspace and its budget: mhfgen.workspace.

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher, sm90 compile check and registry entry; its template and search space
sit beside it.

A program owns one 64-column weight tile (within one expert) of one kv head and walks
row tiles of BLOCK_M tokens of each query head of the group. Three partitions: warpgroup
A (S^T, A^T, the element-wise math, dK, dU), warpgroup B (dP^T, dV, dq by fp32
atomics) and a one-warp TMA producer; A and B exchange dP^T and P^T/dS^T/dA^T through
double-buffered shared memory. The chunking of kv heads per launch and the dq/dr/dK/dU/dV
workspaces are the Triton-language one-pass backward's (mhfgen.kernels.bwd_chunks), and
so is their budget (mhfgen.workspace).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..kernels import sm90
from ..registry import register
from ..spec import KernelSpec
from ..tiling import cdiv
from ..workspace import dr_atomic, fit_launches
from . import _gluon

KERNEL = "flash_mhf_bwd_ws"
#: weight-tile rows per program: one warpgroup's wgmma M
BLOCK_N = sm90.BACKWARD_BLOCK_N


@dataclass(frozen=True)
class BwdWsConfig(_gluon.GluonBackwardConfig):
    """Launch parameters of flash_mhf_bwd_ws (sigmoid, token_splits, producer_regs: see
    _gluon.GluonConfig).

    block_m:       tokens per row tile (the N of the score MMAs, the K of the gradient
                   MMAs): 32 keeps warpgroup A's S^T, A^T, dP^T and dK, dU in registers
                   at D = 128; 64 halves the barrier rounds where D = 64 (padded head_dim).
    stages:        slots of the q/dO ring.
    head_chunk:    kv heads per launch (the dq workspace; see flash_mhf_bwd_fused).
    grads_regs, producer_regs: registers per thread of warpgroup B and of the producer
                   (setmaxnreg); warpgroup A gets what is left.
    dq_vec:        dq's atomics from a layout of four consecutive head_dim elements per
                   thread (vector reductions) instead of the MMA accumulator's.
    """

    variant = KERNEL
    worker_regs = "grads_regs"  # warpgroup B's
    default_partition = "warpgroup A"

    block_m: int = 32
    stages: int = 2
    sigmoid: str = "tanh"
    token_splits: int = 1
    head_chunk: int = 1
    grads_regs: int = 192
    producer_regs: int = 24
    dq_vec: bool = False

    choices = {"block_m": (32, 64), "stages": (2, 3, 4)}

    def describe(self) -> str:
        text = f"BM{self.block_m} " + self.describe_regs()
        if self.token_splits > 1:
            text += f" ts{self.token_splits}"
        if self.dq_vec:
            text += " vec"
        return text + self.describe_sigmoid() + f" hc{self.head_chunk}"


unsupported = sm90.backward_unsupported


def shared_memory(spec: KernelSpec, config: BwdWsConfig) -> int:
    """Bytes: the q/dO ring, K/U/V, the double-buffered exchange tiles (P^T, dS^T, dA^T
    in bf16, dP^T in fp32), with dq_vec the dq tile's layout change (fp32), the
    mbarriers, 1.5 KiB of compiler scratch (fitted to Triton 3.6's sm90 compiles: within
    1.5 KiB above, tests/test_gluon_bwd_ws.py); head_dim padded
    (sm90.backward_head_dim_pad)."""
    d, bm = sm90.backward_head_dim_pad(spec), config.block_m
    ring = config.stages * 2 * bm * d * 2
    weights = 3 * BLOCK_N * d * 2
    exchange = 2 * BLOCK_N * bm * (3 * 2 + 4)
    relayout = bm * d * 4 if config.dq_vec else 0
    return ring + weights + exchange + relayout + 8 * (2 * config.stages + 9) + 1536


def config_problems(spec: KernelSpec, config: BwdWsConfig) -> list[str]:
    """What of `config` does not fit an SM: shared memory, and the register split
    (warpgroup A needs 128 registers a thread)."""
    return config.resource_problems(shared_memory(spec, config), 128)


def registers(spec: KernelSpec, config: BwdWsConfig) -> float:
    """fp32 values a thread of warpgroup A keeps live: dK, dU (BLOCK_N x Dp, the padded
    head_dim) and S^T, A^T, dP^T (BLOCK_N x BLOCK_M), over 128 threads."""
    d = sm90.backward_head_dim_pad(spec)
    return (2 * BLOCK_N * d + 3 * BLOCK_N * config.block_m) / 128


def default_config(spec: KernelSpec, tokens: int, sm_count: int) -> BwdWsConfig:
    """32-token row tiles (64 where head_dim pads to 64), a 2-slot ring, tanh; kv heads per
    launch and token splits as the Triton one-pass backward's heuristic picks them."""
    bm = 64 if sm90.backward_head_dim_pad(spec) <= 64 else 32
    return fit_launches(
        spec,
        BwdWsConfig(block_m=bm),
        tokens,
        sm_count,
        spec.intermediate // BLOCK_N,
        cdiv(max(1, tokens), 4 * bm),
    )


def static_params(spec: KernelSpec, config: BwdWsConfig) -> dict:
    return {
        "sigmoid": config.sigmoid,
        "dr_atomic": dr_atomic(spec, config),
        "token_split": config.token_splits > 1,
        "dq_vec": config.dq_vec,
        **sm90.backward_pad_params(spec),
    }


def smem_layouts(spec: KernelSpec, config: BwdWsConfig) -> dict:
    """The shared layouts: of the descriptors (q/dO rows, K/U/V tiles) and of the
    exchange buffers (EX_LAYOUT: bf16 (BLOCK_N, BLOCK_M) MMA operands; DP_LAYOUT: fp32);
    the descriptors' blocks are the padded head_dim wide (sm90.backward_head_dim_pad)."""
    from triton.experimental.gluon import language as gl

    d, bm = sm90.backward_head_dim_pad(spec), config.block_m
    return {
        "rows": sm90.nvmma_block(spec, bm, d),
        "weights": sm90.nvmma_block(spec, BLOCK_N, d),
        "EX_LAYOUT": sm90.nvmma_block(spec, BLOCK_N, bm)[1],
        "DP_LAYOUT": gl.SwizzledSharedLayout(vec=4, per_phase=1, max_phase=8, order=[1, 0]),
    }


def constexprs(spec: KernelSpec, config: BwdWsConfig) -> dict:
    layouts = smem_layouts(spec, config)
    return dict(
        BLOCK_M=config.block_m,
        BLOCK_N=BLOCK_N,
        STAGES=config.stages,
        EX_LAYOUT=layouts["EX_LAYOUT"],
        DP_LAYOUT=layouts["DP_LAYOUT"],
        **config.register_constexprs(),
    )


#: what the shared one-pass launch path asks of this variant (mhfgen.variants._gluon)
GLUON = _gluon.GluonOnePass(KERNEL, unsupported, config_problems, smem_layouts, constexprs)


def flash_mhf_bwd_ws(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, ...]:
    """(dq, dr, dk, du, dv) of FlashMHF through the warp-specialised Gluon kernel (sm90);
    shapes and dtypes as mhfgen.variants.flash_mhf_bwd_fused's. `config`: a BwdWsConfig,
    or None for the dispatcher's. ValueError where the variant does not support the
    problem."""
    dq, dr, dk, du, dv = _launch(q, k, u, v, sm90.routing_fp32(r), do, config=config)
    return dq, dr.to(r.dtype), dk, du, dv  # the kernel reads and writes r and dr in fp32


#: compile the generated kernel for sm90 down to cubin on any machine (no GPU)
compile_sm90 = GLUON.compile_sm90
_launch = GLUON.launcher()


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


class FlashMhfBwdWs(_gluon.GluonVariant):
    stem = "flash_mhf_bwd_ws"
    op = "bwd"
    Config = BwdWsConfig
    flop_factor = 16
    outputs = ("dq", "dr", "dk", "du", "dv")
    takes_grad = True
    model = GLUON.model(shared_memory, registers, default_config)

    def static_params(self, spec: KernelSpec, config: BwdWsConfig) -> dict:
        return static_params(spec, config)


register(FlashMhfBwdWs())
