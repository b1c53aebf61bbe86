"""Launching an op: the dispatcher picks the variant and its config per call signature.

run_op(op, q, k, u, v, r[, do]) checks the inputs once per signature (shapes, strides,
dtypes, device), asks mhfgen.dispatch for the op's choice (a variant and its config:
the best stored winner across the op's variants, else the heuristic of the preferred
variant that supports the shape) and keeps (launcher, config) in a plan cache, so a
repeated call costs one dict lookup more than calling the variant's launcher directly.
A tuned config that fails on the first call is replaced by the heuristic, as in the
launchers (mhfgen.kernels.configs.first_launch).
"""
from __future__ import annotations

import torch

from .. import registry
from ..dispatch import explain_choice
from ..validation import check_flash_mhf_inputs
from .configs import first_launch, spec_of
from .plans import plan_cache, plan_key, remember

_plans = plan_cache()


def run_op(op: str, *tensors: torch.Tensor):
    """The outputs of `op` (a key of mhfgen.registry.OPS) on (q, k, u, v, r[, do])."""
    do = tensors[5] if len(tensors) > 5 else None
    key = (op, plan_key(None, *tensors[:5], do))
    plan = _plans.get(key)
    if plan is not None:
        launcher, config = plan
        return launcher(*tensors, config=config)
    # the first call: a tuned config that fails to compile or launch is replaced by the
    # heuristic (mhfgen.kernels.configs.first_launch, mhfgen.dispatch.reject_tuned)
    plan, out = first_launch(op, lambda _: _plan(op, tensors),
                             lambda p: p[0](*tensors, config=p[1]), tensors[:5], None)
    remember(_plans, key, plan)
    return out


def _plan(op: str, tensors: tuple) -> tuple:
    q = tensors[0]
    problem = check_flash_mhf_inputs(*tensors[:5])
    spec = spec_of(problem, q)
    choice = explain_choice(op, spec, problem.tokens, q.device)
    return registry.get(choice.variant).launch_fn(), choice.config


def forward(q, k, u, v, r) -> torch.Tensor:
    """o = FlashMHF(q, k, u, v, r) through the dispatcher's forward variant."""
    return run_op("fwd", q, k, u, v, r)


def backward_dq(q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq, dr) through the dispatcher's dQ/dR variant."""
    return run_op("bwd_dq", q, k, u, v, r, do)


def backward_dkv(q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, du, dv) through the dispatcher's dK/dU/dV variant."""
    return run_op("bwd_dkv", q, k, u, v, r, do)
