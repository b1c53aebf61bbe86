"""Launcher of the generated forward kernel (templates/flash_mhf_fwd.py.jinja)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codegen import load_kernel
from ..tiling import cdiv, intermediate_blocks
from ..validation import INT32_LIMIT, check_flash_mhf_inputs
from .buffers import contiguous_strides, empty, ensure_descriptor_allocator, split_counters
from .configs import first_launch, resolve_config, spec_of
from .launch import DirectLaunch
from .plans import plan_cache, plan_key, remember

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


_plans = plan_cache()


def flash_mhf_fwd(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor, config=None
) -> torch.Tensor:
    """o = FlashMHF(q, k, u, v, r) through the generated forward kernel.

    q: (B, L, H, D) with unit last stride; k/u/v: (Hkv, E, De, D); r: (B, L, H, E) fp32 or
    q's dtype. Returns o (B, L, H, D), contiguous, in q's dtype. `config` overrides the
    dispatcher's choice. With inter_splits = S > 1, S programs share a row block's
    intermediate dimension and write fp32 partials to a workspace (S, B, L, H, D); the last
    of them to finish sums the S partials into o, in the same launch (one counter per row
    block, see split_counters).
    """
    key = plan_key(config, q, k, u, v, r)
    plan = _plans.get(key)
    if plan is not None:
        return _run(plan, q, k, u, v, r)
    plan, o = first_launch(
        KERNEL,
        lambda c: _make_plan(q, k, u, v, r, c),
        lambda p: _run(p, q, k, u, v, r),
        (q, k, u, v, r),
        config,
    )
    remember(_plans, key, plan)
    return o


def _run(plan: FwdPlan, q, k, u, v, r) -> torch.Tensor:
    """Allocate the output (and the split workspace) and launch the plan's kernel."""
    o = empty(plan.out_shape, q.dtype, q.device)
    if plan.launch is None:
        return o
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    if not plan.splits:
        plan.launch(q, k, u, v, r, o)
    else:
        work = empty((plan.splits, *plan.out_shape), torch.float32, q.device)
        plan.launch(q, k, u, v, r, work, o, split_counters(plan.blocks, q.device))
    return o


def _make_plan(q, k, u, v, r, config) -> FwdPlan:
    """Check the inputs, choose the config and compile: everything but the launch."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    B, L, H, D = q.shape
    if problem.tokens == 0:
        return FwdPlan(None, (B, L, H, D), 0, 0, False)
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
    rows = problem.tokens * config.group_heads
    units = (
        intermediate_blocks(spec, config.block_n)
        if spec.expert_dim % config.block_n == 0
        else spec.experts
    )  # what the splits divide: tiles, or experts
    # no split left empty: ceil(units / ceil(units / S)) splits of ceil(units / S) units
    splits = cdiv(units, cdiv(units, min(config.inter_splits, units)))
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
    scalars = (
        q.stride(0),
        q.stride(1),
        q.stride(2),
        r.stride(0),
        r.stride(1),
        r.stride(2),
        r.stride(3),
        *out_strides,
        L,
        rows,
    )
    meta = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    copy = not (k.is_contiguous() and u.is_contiguous() and v.is_contiguous())
    return FwdPlan(
        DirectLaunch(kernel, grid, scalars, meta),
        (B, L, H, D),
        splits if config.inter_splits > 1 else 0,
        grid[0] * grid[1],
        copy,
    )
