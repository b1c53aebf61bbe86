"""flash_mhf_bwd_dq: the Triton-language dQ/dR backward (flash_mhf_bwd_dq.py.jinja).

Config fields beyond the tiles (mhfgen.variants._triton): group_heads, tma and
warp_specialize, as the forward's (mhfgen.variants.flash_mhf_fwd).

Shared memory (fitted to Triton 3.6 on sm90; docs/PERFORMANCE.md), Dp and b as the forward's:
    (num_stages * 3 * BLOCK_N + 2 * BLOCK_M) * Dp * b    (K/U/V ring + q, dO)
    + 2 * BLOCK_M * BLOCK_N * b in fp32 (IEEE dots stage dS and dA; measured: 128/64, one
    stage, D = 128 needs 262144 bytes, the base formula gives 230400) + 1 KiB.
Registers: (BM*Dp + 3*BM*BN) / (32 * num_warps) (the dq accumulator, S, A and dP tiles).

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher (check, allocate, launch: a plan per call signature) and registry entry;
its template and search space sit beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor

from ..codegen import load_kernel
from ..kernels.buffers import contiguous_strides, ensure_descriptor_allocator, weights_need_copy
from ..kernels.configs import checked_call, resolve_config
from ..kernels.grad_plans import DqPlan, run_dq_plan
from ..kernels.launch import DirectLaunch
from ..kernels.plans import CachedLaunch
from ..registry import register
from ..spec import KernelSpec
from ..tiling import cdiv, even_tiles
from . import _triton

KERNEL = "flash_mhf_bwd_dq"


def flash_mhf_bwd_dq(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, Tensor]:
    """(dq, dr) of FlashMHF for the output gradient `do` (B, L, H, D).

    dq: (B, L, H, D) contiguous in q's dtype; dr: (B, L, H, E) contiguous in r's dtype.
    """
    return _launch(q, k, u, v, r, do, config=config)


def _make_plan(q, k, u, v, r, do, config) -> DqPlan:
    """Check the inputs, choose the config and compile: everything but the launch."""
    tokens, spec, config, copy_do, do_strides = checked_call(q, k, u, v, r, do, config, CHOOSE)
    B, L, H, D = q.shape
    if tokens == 0:
        return DqPlan(None, (B, L, H, D), tuple(r.shape), False, False)
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
    rows = tokens * config.group_heads
    grid = (cdiv(rows, config.block_m), H // config.group_heads)
    scalars = (
        *q.stride()[:3],
        *r.stride(),
        *do_strides,
        *contiguous_strides((B, L, H, D))[:3],
        *contiguous_strides(tuple(r.shape)),
        L,
        rows,
    )
    launch = DirectLaunch(kernel, grid, scalars, _triton.launch_meta(config))
    return DqPlan(launch, (B, L, H, D), tuple(r.shape), weights_need_copy(k, u, v), copy_do)


#: the config a call runs with: the given one or the dispatcher's
CHOOSE = partial(resolve_config, KERNEL)
_launch = CachedLaunch(KERNEL, _make_plan, run_dq_plan)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config(_triton.GroupedConfig):
    """The launch config of flash_mhf_bwd_dq (fields: see the module doc)."""

    variant = "flash_mhf_bwd_dq"

    group_heads: int = 1
    tma: bool = False
    warp_specialize: bool = False


class FlashMhfBwdDq(_triton.TritonVariant):
    stem = "flash_mhf_bwd_dq"
    op = "bwd_dq"
    Config = Config
    schema2_kernel = "flash_mhf_bwd_dq"
    flop_factor = 10  # S, A, dP recomputed; dQ from dS and dA
    outputs = ("dq", "dr")
    takes_grad = True
    gpu_start = (128, 64, 8, 3)

    def static_params(self, spec: KernelSpec, config: Config) -> dict:
        params = _triton.tile_params(spec, config)
        params.update(
            group_heads=config.group_heads,
            tma=config.tma,
            warp_specialize=config.warp_specialize and params["even_de"],
        )
        return params

    def shared_memory(self, spec: KernelSpec, config: Config) -> int:
        dp = _triton.padded_head_dim(spec, config)
        bm, bn, st = config.block_m, config.block_n, config.num_stages
        elems = (st * 3 * bn + 2 * bm) * dp + (2 * bm * bn if spec.dtype == "float32" else 0)
        return elems * spec.torch_dtype.itemsize + 1024

    def registers(self, spec: KernelSpec, config: Config) -> float:
        bm, bn, dp = config.block_m, config.block_n, _triton.padded_head_dim(spec, config)
        return (bm * dp + 3 * bm * bn) / (32 * config.num_warps)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> Config:
        tiles = _triton.start_tiles(self, spec, tokens * spec.group)
        return _triton.shrink_to_fit(self, spec, Config(**tiles, group_heads=spec.group))

    def own_prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, rows: int, sm_count: int
    ) -> str | None:
        if config.warp_specialize and not even_tiles(spec, config.block_n):
            return "warp_specialize applies only when block_n divides expert_dim"
        return None


register(FlashMhfBwdDq())
