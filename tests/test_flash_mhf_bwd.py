"""The generated backward kernels (dQ/dR and dK/dU/dV) against float64 autograd."""

import pytest
import torch
from cases import CASES, CONFIGS, DTYPES, EMPTY, grouped
from kernel_harness import assert_close, inputs_and_reference, run_poisoned

from mhfgen.variants.flash_mhf_bwd_dkv import flash_mhf_bwd_dkv
from mhfgen.variants.flash_mhf_bwd_dq import flash_mhf_bwd_dq


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("config_index", range(len(CONFIGS["flash_mhf_bwd_dq"])))
def test_bwd_dq_matches_reference(case, dtype, config_index):
    config = CONFIGS["flash_mhf_bwd_dq"][config_index]
    if config_index == 1:
        config = grouped(config, case)
    (q, k, u, v, r, do), ref = inputs_and_reference(case, dtype)
    dq, dr = run_poisoned(flash_mhf_bwd_dq, q, k, u, v, r, do, config)
    assert dq.dtype == dtype and dr.dtype == r.dtype
    assert_close("dq", dq, ref["dq"], dtype, case)
    assert_close("dr", dr, ref["dr"], dtype, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("config_index", range(len(CONFIGS["flash_mhf_bwd_dkv"])))
def test_bwd_dkv_matches_reference(case, dtype, config_index):
    config = CONFIGS["flash_mhf_bwd_dkv"][config_index]
    (q, k, u, v, r, do), ref = inputs_and_reference(case, dtype)
    dk, du, dv = run_poisoned(flash_mhf_bwd_dkv, q, k, u, v, r, do, config)
    for name, got in (("dk", dk), ("du", du), ("dv", dv)):
        assert got.shape == k.shape and got.dtype == dtype
        assert_close(name, got, ref[name], dtype, case)


def test_backward_empty_sequence_gives_zero_weight_grads():
    (q, k, u, v, r, do), _ = inputs_and_reference(EMPTY, torch.float32)
    dq, dr = flash_mhf_bwd_dq(q, k, u, v, r, do)
    dk, du, dv = flash_mhf_bwd_dkv(q, k, u, v, r, do)
    assert dq.shape == q.shape and dr.shape == r.shape
    for g in (dk, du, dv):
        assert g.shape == k.shape and not g.any()
