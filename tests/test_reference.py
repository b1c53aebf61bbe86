"""mhfgen.reference against an independent loop over heads and experts, in float64."""

import pytest
import torch
import torch.nn.functional as F

from mhfgen import reference
from mhfgen.verification import Case, make_inputs

SHAPES = [
    Case("base", 2, 3, 2, 2, 16, 2, 8),
    Case("D96", 1, 4, 2, 2, 96, 2, 16),
    Case("E1", 1, 3, 2, 2, 32, 1, 24),
    Case("gqa", 1, 5, 4, 2, 16, 3, 8),
    Case("L1", 1, 1, 3, 1, 16, 2, 8),
]


def loop_formula(q, k, u, v, r):
    """O[b,l,h] = sum_e r[b,l,h,e] (silu(q K_e^T) * (q U_e^T)) V_e, one head, expert and
    token at a time."""
    B, L, H, D = q.shape
    Hkv, E = k.shape[:2]
    out = torch.zeros_like(q)
    for b in range(B):
        for l in range(L):
            for h in range(H):
                g = h // (H // Hkv)
                for e in range(E):
                    x = q[b, l, h]
                    act = F.silu(k[g, e] @ x) * (u[g, e] @ x)
                    out[b, l, h] += r[b, l, h, e] * (act @ v[g, e])
    return out


@pytest.mark.parametrize("case", SHAPES, ids=lambda c: c.name)
def test_reference_matches_loop_formula(case):
    q, k, u, v, r, _ = make_inputs(case, torch.float64, "cpu", r_dtype=torch.float64)
    torch.testing.assert_close(
        reference.flash_mhf(q, k, u, v, r), loop_formula(q, k, u, v, r), rtol=1e-12, atol=1e-12
    )


def test_router_sums_to_one_and_handles_underflow():
    q = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    w = torch.randn(4, 8, 5, dtype=torch.float64)
    r = reference.router(q, w)
    assert r.shape == (2, 3, 4, 5) and r.dtype == torch.float64
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 3, 4, dtype=torch.float64))
    r32 = reference.router(torch.full((1, 1, 1, 2), -1e4), torch.ones(1, 2, 3))
    assert torch.isfinite(r32).all() and r32.dtype == torch.float32


def test_rms_norm_heads_in_float32():
    q = torch.randn(2, 3, 4, 8, dtype=torch.bfloat16)
    w = torch.rand(4, 8)
    out = reference.rms_norm_heads(q, w)
    qf = q.float()
    want = qf / torch.sqrt(qf.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)


def test_layer_reference_composes_the_pieces():
    torch.manual_seed(0)
    B, L, d, H, E, De = 2, 3, 32, 2, 2, 8
    D = d // H
    x = torch.randn(B, L, d, dtype=torch.float64)
    w_in, w_out = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    w_r = torch.randn(H, D, E, dtype=torch.float64)
    k, u, v = (torch.randn(H, E, De, D, dtype=torch.float64) for _ in range(3))
    norm = torch.rand(H, D, dtype=torch.float64)
    y = reference.flash_mhf_layer(x, w_in, w_out, w_r, k, u, v, norm)
    q = reference.rms_norm_heads((x @ w_in.T).view(B, L, H, D), norm)
    o = loop_formula(q, k, u, v, reference.router(q, w_r))
    torch.testing.assert_close(y, o.reshape(B, L, d) @ w_out.T)
