"""Launchers cache a plan per call signature; the dispatcher's clear_cache empties them."""

import sys

import torch

from mhfgen import dispatch
from mhfgen.variants.flash_mhf_bwd_dkv import flash_mhf_bwd_dkv
from mhfgen.variants.flash_mhf_bwd_dq import flash_mhf_bwd_dq
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
from mhfgen.verification import Case, make_inputs

CASE = Case("plan", 1, 5, 2, 2, 32, 2, 32)


def _count_plans(monkeypatch, module_name):
    launch = sys.modules[module_name]._launch
    calls = []
    original = launch.make_plan

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(launch, "make_plan", counting)
    return calls


def test_repeated_calls_reuse_the_plan_and_clear_cache_forgets_it(monkeypatch):
    dispatch.clear_cache()
    calls = _count_plans(monkeypatch, "mhfgen.variants.flash_mhf_fwd")
    q, k, u, v, r, _ = make_inputs(CASE, torch.float32, "cpu")
    first = flash_mhf_fwd(q, k, u, v, r)
    second = flash_mhf_fwd(q, k, u, v, r)
    assert len(calls) == 1
    torch.testing.assert_close(first, second)
    flash_mhf_fwd(q[:, :3], k, u, v, r[:, :3])  # another signature: another plan
    assert len(calls) == 2
    dispatch.clear_cache()
    flash_mhf_fwd(q, k, u, v, r)
    assert len(calls) == 3


def test_backward_plans_handle_do_in_another_dtype_and_layout(monkeypatch):
    q, k, u, v, r, do = make_inputs(CASE, torch.float32, "cpu")
    do_t = do.transpose(2, 3).contiguous().transpose(2, 3)  # non-unit last stride
    dq_a, dr_a = flash_mhf_bwd_dq(q, k, u, v, r, do)
    dq_b, dr_b = flash_mhf_bwd_dq(q, k, u, v, r, do_t)
    torch.testing.assert_close(dq_a, dq_b)
    torch.testing.assert_close(dr_a, dr_b)
    grads_a = flash_mhf_bwd_dkv(q, k, u, v, r, do)
    grads_b = flash_mhf_bwd_dkv(q, k, u, v, r, do_t.double())
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def test_bad_input_is_not_cached(monkeypatch):
    q, k, u, v, r, _ = make_inputs(CASE, torch.float32, "cpu")
    for _ in range(2):
        try:
            flash_mhf_fwd(q, k, u, v, r[..., :1])
        except ValueError as exc:
            assert "r must have shape" in str(exc)
        else:
            raise AssertionError("bad r was accepted")


def test_the_backward_form_is_decided_once_per_signature(monkeypatch):
    """mhfgen.kernels.backward keeps its decision (one pass, the split pair as dispatched,
    or a deterministic dK/dU/dV config) per call signature: a repeated call does not ask
    the dispatcher again, whichever the decision (the split pair's once read as a miss)."""
    from mhfgen.kernels import dispatched

    dispatch.clear_cache()
    calls = []
    original = dispatched._backward_plan

    def counting(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(dispatched, "_backward_plan", counting)
    q, k, u, v, r, do = make_inputs(CASE, torch.float32, "cpu")
    first = dispatched.backward(q, k, u, v, r, do)
    second = dispatched.backward(q, k, u, v, r, do)
    assert calls == [False]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
    monkeypatch.setenv("MHFGEN_DETERMINISTIC", "1")
    dispatched.backward(q, k, u, v, r, do)
    dispatched.backward(q, k, u, v, r, do)
    assert calls == [False, True]
