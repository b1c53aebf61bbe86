"""The launch plans of the split backward's two ops, shared by each op's Triton-language
and Gluon variants: what a call signature decides, and the per-call part that allocates
the gradients and launches (dQ/dR: DqPlan, run_dq_plan; dK/dU/dV: DkvPlan, run_dkv_plan).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .buffers import empty


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


def run_dq_plan(plan: DqPlan, q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor]:
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


def run_dkv_plan(
    plan: DkvPlan, q, k, u, v, r, do
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allocate the gradients and launch the plan's kernels (also flash_mhf_bwd_dkv_ws's
    plans)."""
    if not plan.launches:
        return tuple(torch.zeros(k.shape, dtype=k.dtype, device=k.device) for _ in range(3))
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    if plan.copy_do:
        do = do.to(q.dtype).contiguous()
    # three separate buffers: outputs of a custom op may not alias each other (atomic
    # partial sums in 16 bits are converted into new tensors below, so there one zeroed
    # fp32 buffer serves all three: one fill instead of three)
    if plan.atomic and k.dtype != torch.float32:
        grads = list(torch.zeros((3, *k.shape), dtype=torch.float32, device=k.device))
    elif plan.atomic:
        grads = [torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(3)]
    else:
        grads = [empty(k.shape, k.dtype, k.device) for _ in range(3)]
    for launch in plan.launches:
        launch(q, k, u, v, r, do, *grads)
    if plan.atomic and k.dtype != torch.float32:
        grads = [g.to(k.dtype) for g in grads]
    return grads[0], grads[1], grads[2]
