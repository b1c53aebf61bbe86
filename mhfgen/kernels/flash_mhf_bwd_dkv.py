"""Launcher of the generated dK/dU/dV backward kernel (templates/flash_mhf_bwd_dkv.py.jinja)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codegen import load_kernel
from ..tiling import cdiv, intermediate_blocks
from ..validation import check_flash_mhf_inputs
from .buffers import empty, grad_plan_inputs
from .configs import first_launch, resolve_config, spec_of
from .launch import DirectLaunch
from .plans import plan_cache, plan_key, remember

KERNEL = "flash_mhf_bwd_dkv"


@dataclass(frozen=True)
class DkvPlan:
    """What a call's signature decides, computed once (see kernels.plans.signature)."""

    # one DirectLaunch, or (dK+dU, dV) with split_grads; flash_mhf_bwd_dkv_ws's one
    # sm90.BackwardLaunch; () when no tokens. Each is called as launch(q, k, u, v, r, do,
    # dk, du, dv)
    launches: tuple
    atomic: bool  # token splits: fp32 partials meet by atomics in zeroed buffers
    copy_weights: bool  # k/u/v need a contiguous copy
    copy_do: bool  # dO needs a contiguous copy in q's dtype


_plans = plan_cache()


def flash_mhf_bwd_dkv(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    do: torch.Tensor,
    config=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D).

    Each (Hkv, E, De, D), contiguous, in k's dtype. With token_splits = S > 1 the tokens
    are split over S programs per weight tile, whose fp32 partials meet by atomic adds in
    a zeroed fp32 buffer (the outputs themselves when the dtype is fp32). With split_grads
    two kernels run: dK and dU, then dV.
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


def run_plan(plan: DkvPlan, q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allocate the gradients and launch the plan's kernels (also flash_mhf_bwd_dkv_ws's
    plans)."""
    if not plan.launches:
        return tuple(torch.zeros(k.shape, dtype=k.dtype, device=k.device) for _ in range(3))
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    if plan.copy_do:
        do = do.to(q.dtype).contiguous()
    # three separate buffers: outputs of a custom op may not alias each other
    if plan.atomic:
        grads = [torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(3)]
    else:
        grads = [empty(k.shape, k.dtype, k.device) for _ in range(3)]
    for launch in plan.launches:
        launch(q, k, u, v, r, do, *grads)
    if plan.atomic and k.dtype != torch.float32:
        grads = [g.to(k.dtype) for g in grads]
    return grads[0], grads[1], grads[2]


def _make_plan(q, k, u, v, r, do, config) -> DkvPlan:
    """Check the inputs, choose the config and compile: everything but the launch."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    copy_do, do_strides = grad_plan_inputs(q, do)
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    if problem.tokens == 0:
        return DkvPlan((), False, False, False)
    rows = problem.tokens * spec.group
    per_split = cdiv(cdiv(rows, config.token_splits), config.block_m) * config.block_m
    splits = cdiv(rows, per_split)
    grid = (intermediate_blocks(spec, config.block_n), spec.kv_heads, splits)
    entries = (f"{KERNEL}_kernel", f"{KERNEL}_dv_kernel") if config.split_grads else (None,)
    kernels = tuple(load_kernel(KERNEL, spec, config, entry) for entry in entries)
    scalars = (
        q.stride(0),
        q.stride(1),
        q.stride(2),
        r.stride(0),
        r.stride(1),
        r.stride(2),
        r.stride(3),
        *do_strides,
        q.shape[1],
        rows,
        per_split,
    )
    meta = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    copy = not (k.is_contiguous() and u.is_contiguous() and v.is_contiguous())
    launches = tuple(DirectLaunch(kernel, grid, scalars, meta) for kernel in kernels)
    return DkvPlan(launches, config.token_splits > 1, copy, copy_do)
