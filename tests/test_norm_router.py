"""mhfgen.norm_router: the layer's RMSNorm + router with an analytic, chunked backward,
against autograd of the reference form."""

import pytest
import torch

from mhfgen import reference
from mhfgen.norm_router import norm_router


def _inputs(dtype, norm=True, B=2, L=5, H=3, D=8, E=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, L, H, D, generator=g).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(H, D, generator=g)).to(dtype).requires_grad_() if norm else None
    wr = (0.3 * torch.randn(H, D, E, generator=g)).to(dtype).requires_grad_()
    return q, w, wr


def _reference(q, w, wr):
    qn = reference.rms_norm_heads(q, w) if w is not None else q
    return qn, reference.router(qn, wr)


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no-norm"])
@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_values_and_gradients_match_autograd_of_the_reference(norm, chunk):
    q, w, wr = _inputs(torch.float64, norm)
    qn, r = norm_router(q, w, wr, chunk=chunk)
    rq, rr = _reference(q, w, wr)
    torch.testing.assert_close(qn, rq)
    torch.testing.assert_close(r, rr)
    g = torch.Generator().manual_seed(1)
    dqn, dr = (
        torch.randn(qn.shape, generator=g, dtype=qn.dtype),
        torch.randn(r.shape, generator=g, dtype=r.dtype),
    )
    params = [t for t in (q, w, wr) if t is not None]
    mine = torch.autograd.grad((qn, r), params, (dqn, dr), allow_unused=True)
    theirs = torch.autograd.grad((rq, rr), params, (dqn, dr))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    q, w, wr = _inputs(torch.float64, B=1, L=3, H=2, D=4, E=3)
    assert torch.autograd.gradcheck(lambda *t: norm_router(*t, chunk=2), (q, w, wr))


def test_only_the_router_output_used():
    q, w, wr = _inputs(torch.float64)
    _, r = norm_router(q, w, wr, chunk=4)
    _, rr = _reference(q, w, wr)
    mine = torch.autograd.grad(r.sum(), (q, w, wr))
    theirs = torch.autograd.grad(rr.sum(), (q, w, wr))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)


def test_half_precision_matches_the_reference_form():
    """qn is rounded to q's dtype before the router, as in the reference; math in fp32."""
    q, w, wr = _inputs(torch.float16)
    qn, r = norm_router(q, w, wr, chunk=4)
    rq, rr = _reference(q, w, wr)
    assert qn.dtype == torch.float16 and r.dtype == torch.float32
    torch.testing.assert_close(qn, rq, atol=0, rtol=0)
    torch.testing.assert_close(r, rr, atol=1e-6, rtol=1e-5)
    (dq,) = torch.autograd.grad(qn.float().sum() + r.sum(), (q,))
    (rdq,) = torch.autograd.grad(rq.float().sum() + rr.sum(), (q,))
    torch.testing.assert_close(dq, rdq, atol=2e-3, rtol=2e-3)


def test_bad_chunk():
    q, w, wr = _inputs(torch.float32)
    with pytest.raises(ValueError, match="chunk"):
        norm_router(q, w, wr, chunk=0)
