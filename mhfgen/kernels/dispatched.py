"""Launching an op: the dispatcher picks the variant and its config per call signature.

run_op(op, q, k, u, v, r[, do]) checks the inputs once per signature (shapes, strides,
dtypes, device), asks mhfgen.dispatch for the op's choice (a variant and its config:
the best stored winner across the op's variants, else the heuristic of the preferred
variant that supports the shape) and keeps (launcher, config) in a plan cache, so a
repeated call costs one dict lookup more than calling the variant's launcher directly.
A tuned config that fails on the first call is replaced by the heuristic, as in the
launchers (mhfgen.kernels.configs.first_launch).

`backward` runs the whole backward in the form the dispatcher picks for the call
(mhfgen.dispatch.backward_form): the one-pass op 'bwd', or 'bwd_dq' beside 'bwd_dkv'; in
a deterministic run the split pair with dK/dU/dV's token splits off. On a GPU the split
pair's two kernels run on two streams, dK/dU/dV on the caller's and then dQ/dR on a side
stream joined before the call returns: they read the same inputs and write different
outputs, and dQ/dR's programs (shorter, and more of them) fill the multiprocessors that
dK/dU/dV's last partial wave leaves idle. MHFGEN_BACKWARD_STREAMS=1 runs them one after
the other on the caller's stream.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import registry
from ..dispatch import FUSED, SPLIT, backward_form, deterministic_requested, explain_choice
from ..env import flag
from ..validation import check_flash_mhf_inputs
from .configs import first_launch, spec_of
from .plans import plan_cache, plan_key, remember

_plans = plan_cache()
_backward_plans = plan_cache()
_side_streams: dict = {}
STREAMS_ENV = "MHFGEN_BACKWARD_STREAMS"


def run_op(op: str, *tensors: torch.Tensor):
    """The outputs of `op` (a key of mhfgen.registry.OPS) on (q, k, u, v, r[, do]), or on
    (q, k, u, v, r, scales) for the forward with FP8 weights."""
    do = tensors[5] if len(tensors) > 5 else None
    key = (op, plan_key(None, *tensors[:5], do))
    plan = _plans.get(key)
    if plan is not None:
        launcher, config = plan
        return launcher(*tensors, config=config)
    # the first call: a tuned config that fails to compile or launch is replaced by the
    # heuristic (mhfgen.kernels.configs.first_launch, mhfgen.dispatch.reject_tuned)
    plan, out = first_launch(
        op, lambda _: _plan(op, tensors), lambda p: p[0](*tensors, config=p[1]), tensors[:5], None
    )
    remember(_plans, key, plan)
    return out


def _plan(op: str, tensors: tuple) -> tuple:
    q = tensors[0]
    problem = check_flash_mhf_inputs(*tensors[:5])
    spec = spec_of(problem, q, tensors[1])
    choice = explain_choice(op, spec, problem.tokens, q.device)
    return registry.get(choice.variant).launch_fn(), choice.config


def forward(q, k, u, v, r, scales=None) -> torch.Tensor:
    """o = FlashMHF(q, k, u, v, r) through the dispatcher's forward variant; with FP8
    weights (k, u, v in float8_e4m3fn) their `scales` (3, Hkv, E, De) come after r."""
    if scales is None:
        return run_op("fwd", q, k, u, v, r)
    return run_op("fwd", q, k, u, v, r, scales)


def backward_dq(q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq, dr) through the dispatcher's dQ/dR variant."""
    return run_op("bwd_dq", q, k, u, v, r, do)


def backward_dkv(q, k, u, v, r, do) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, du, dv) through the dispatcher's dK/dU/dV variant."""
    return run_op("bwd_dkv", q, k, u, v, r, do)


def backward(q, k, u, v, r, do) -> tuple[torch.Tensor, ...]:
    """(dq, dr, dk, du, dv) in the backward form the dispatcher picks for the call: the
    one pass ('bwd'), or the split pair 'bwd_dkv' and 'bwd_dq' (on two streams on a GPU:
    two_streams). Where deterministic algorithms are
    requested (mhfgen.dispatch.deterministic_requested) the split pair runs, dK/dU/dV
    without token splits: no atomic adds, bitwise-reproducible gradients."""
    deterministic = deterministic_requested()
    key = (plan_key(None, q, k, u, v, r, do), deterministic)
    plan = _backward_plans.get(key)
    if plan is None:
        plan = remember(_backward_plans, key, _backward_plan(q, k, u, v, r, do, deterministic))
    if plan is FUSED:
        return run_op("bwd", q, k, u, v, r, do)

    def dkv():
        if plan is SPLIT:
            return run_op("bwd_dkv", q, k, u, v, r, do)
        launcher, config = plan  # deterministic: this dK/dU/dV config, token splits off
        return launcher(q, k, u, v, r, do, config=config)

    if not two_streams(q.device):
        dq, dr = run_op("bwd_dq", q, k, u, v, r, do)
        dk, du, dv = dkv()
        return dq, dr, dk, du, dv
    main = torch.cuda.current_stream(q.device)
    side = _side_stream(q.device)
    side.wait_stream(main)  # the inputs are ready
    dk, du, dv = dkv()  # launched first: its programs are dispatched first
    with torch.cuda.stream(side):
        dq, dr = run_op("bwd_dq", q, k, u, v, r, do)
    main.wait_stream(side)
    # dq and dr were allocated on the side stream and are used on the caller's: their
    # memory must not return to the side stream's pool before the caller's work on them
    dq.record_stream(main)
    dr.record_stream(main)
    return dq, dr, dk, du, dv


def two_streams(device: torch.device) -> bool:
    """Whether the split backward's kernels run on two streams: on a CUDA device unless
    MHFGEN_BACKWARD_STREAMS is on (mhfgen.env.flag)."""
    return device.type == "cuda" and not flag(STREAMS_ENV)


def _side_stream(device: torch.device):
    """The side stream of `device` (one per device, made on first use)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _side_streams.get(index)
    if stream is None:
        stream = _side_streams.setdefault(index, torch.cuda.Stream(index))
    return stream


def _backward_plan(q, k, u, v, r, do, deterministic: bool):
    """FUSED; SPLIT (the split pair as dispatched); or (launcher, config) of a dK/dU/dV
    variant whose dispatched config is made deterministic (token_splits=1). Never None:
    the plan cache takes None for a miss."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    spec = spec_of(problem, q, k)
    form = backward_form(spec, problem.tokens, q.device, deterministic)
    if form == FUSED:
        return FUSED
    if not deterministic:
        return SPLIT
    choice = explain_choice("bwd_dkv", spec, problem.tokens, q.device)
    config = choice.config
    if getattr(config, "token_splits", 1) > 1:
        config = dataclasses.replace(config, token_splits=1)
    return registry.get(choice.variant).launch_fn(), config
