"""Launcher of the generated dQ/dR backward kernel (templates/flash_mhf_bwd_dq.py.jinja)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codegen import load_kernel
from ..tiling import cdiv
from ..validation import check_flash_mhf_inputs
from .buffers import contiguous_strides, empty, ensure_descriptor_allocator, grad_plan_inputs
from .configs import first_launch, resolve_config, spec_of
from .launch import DirectLaunch
from .plans import plan_cache, plan_key, remember

KERNEL = "flash_mhf_bwd_dq"


@dataclass(frozen=True)
class DqPlan:
    """What a call's signature decides, computed once (see kernels.plans.signature)."""

    # the kernel's launch (a DirectLaunch here, an sm90.BackwardLaunch for
    # flash_mhf_bwd_dq_ws): launch(q, k, u, v, r, do, dq, dr); None when there are no tokens
    launch: object
    dq_shape: tuple
    dr_shape: tuple
    copy_weights: bool  # k/u/v need a contiguous copy
    copy_do: bool  # dO needs a contiguous copy in q's dtype


_plans = plan_cache()


def flash_mhf_bwd_dq(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    do: torch.Tensor,
    config=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq, dr) of FlashMHF for the output gradient `do` (B, L, H, D).

    dq: (B, L, H, D) contiguous in q's dtype; dr: (B, L, H, E) contiguous in r's dtype.
    """
    key = plan_key(config, q, k, u, v, r, do)
    plan = _plans.get(key)
    if plan is not None:
        return run_plan(plan, q, k, u, v, r, do)
    plan, out = first_launch(
        KERNEL,
        lambda c: _make_plan(q, k, u, v, r, do, c),
        lambda p: run_plan(p, q, k, u, v, r, do),
        (q, k, u, v, r),
        config,
    )
    remember(_plans, key, plan)
    return out


def run_plan(plan: DqPlan, q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate dq and dr and launch the plan's kernel (also flash_mhf_bwd_dq_ws's plans)."""
    dq = empty(plan.dq_shape, q.dtype, q.device)
    dr = empty(plan.dr_shape, r.dtype, r.device)
    if plan.launch is None:
        return dq, dr
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    if plan.copy_do:
        do = do.to(q.dtype).contiguous()
    plan.launch(q, k, u, v, r, do, dq, dr)
    return dq, dr


def _make_plan(q, k, u, v, r, do, config) -> DqPlan:
    """Check the inputs, choose the config and compile: everything but the launch."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    copy_do, do_strides = grad_plan_inputs(q, do)
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    B, L, H, D = q.shape
    if problem.tokens == 0:
        return DqPlan(None, (B, L, H, D), tuple(r.shape), False, False)
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
    rows = problem.tokens * config.group_heads
    grid = (cdiv(rows, config.block_m), H // config.group_heads)
    scalars = (
        q.stride(0),
        q.stride(1),
        q.stride(2),
        r.stride(0),
        r.stride(1),
        r.stride(2),
        r.stride(3),
        *do_strides,
        *contiguous_strides((B, L, H, D))[:3],
        *contiguous_strides(tuple(r.shape)),
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
    return DqPlan(
        DirectLaunch(kernel, grid, scalars, meta), (B, L, H, D), tuple(r.shape), copy, copy_do
    )
