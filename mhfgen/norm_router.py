"""The FlashMHF layer's per-head RMSNorm of Q and its router, with activation memory O(chunk).

Forward (SPEC.md section 1, steps 2 and 3), per token and head, in fp32 whatever q's dtype:

    x = q,  rstd = 1 / sqrt(mean_d(x^2) + eps),  n = x * rstd,  qn = n * w       (w: (H, D))
    P = qn W_R[h]  (W_R: (H, D, E)),  g = sigmoid(P),  s = max(sum_e g, 1e-20),  R = g / s

Backward, given dqn (from the core, plus nothing else) and dR (from the core):

    dg = (dR - [sum_e g > 1e-20] * sum_e(dR * R)) / s        dP = dg * g * (1 - g)
    dqn' = dqn + dP W_R[h]^T                                   dW_R[h] += qn^T dP
    dw += sum_tokens dqn' * n                                  dn = dqn' * w
    dx = rstd * (dn - n * mean_d(dn * n))

Autograd of the plain PyTorch form (mhfgen.reference.rms_norm_heads and router) keeps
several fp32 copies of Q for the backward: at 16384 tokens and d = 2048 each is 128 MiB,
more than the whole fused core needs. Here only q (its own dtype) is saved; both passes walk
the tokens in chunks, so fp32 temporaries are (chunk, H, D). The results equal the
reference's (tests/test_norm_router.py checks values and gradients, gradcheck in float64).
"""
from __future__ import annotations

import torch

from .reference import RMS_EPS, ROUTER_EPS

#: tokens per chunk: fp32 temporaries of (CHUNK, H, D) elements
CHUNK = 4096


def _work_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _forward_chunk(x: torch.Tensor, norm_weight, w_router: torch.Tensor, dtype: torch.dtype):
    """x: (T, H, D) in the work dtype -> (n, rstd, qn, g, s) of the formulas above; qn is
    rounded to `dtype` (q's), as the core and the reference's router see it."""
    if norm_weight is not None:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        n = x * rstd
        qn = (n * norm_weight).to(dtype).to(x.dtype)
    else:
        n = rstd = None
        qn = x
    g = torch.sigmoid(torch.einsum("thd,hde->the", qn, w_router))
    s = g.sum(-1, keepdim=True)
    return n, rstd, qn, g, s


class _NormRouter(torch.autograd.Function):
    """See the module docstring; fp32 (float64 for float64 q) also under autocast."""

    @staticmethod
    def forward(ctx, q, norm_weight, w_router, chunk):
        with torch.autocast(q.device.type, enabled=False):
            return _NormRouter._forward(ctx, q, norm_weight, w_router, chunk)

    @staticmethod
    def _forward(ctx, q, norm_weight, w_router, chunk):
        B, L, H, D = q.shape
        work = _work_dtype(q)
        flat = q.reshape(B * L, H, D)
        qn_out = torch.empty_like(q) if norm_weight is not None else None
        r = torch.empty(B, L, H, w_router.shape[-1], dtype=work, device=q.device)
        r_flat = r.view(B * L, H, -1)
        qn_flat = qn_out.view(B * L, H, D) if qn_out is not None else None
        nw = norm_weight.to(work) if norm_weight is not None else None
        wr = w_router.to(work)
        for lo in range(0, B * L, chunk):
            _, _, qn, g, s = _forward_chunk(flat[lo:lo + chunk].to(work), nw, wr, q.dtype)
            r_flat[lo:lo + chunk] = g / s.clamp_min(ROUTER_EPS)
            if qn_flat is not None:
                qn_flat[lo:lo + chunk] = qn
        ctx.save_for_backward(q, norm_weight, w_router)
        ctx.chunk = chunk
        if qn_out is None:
            return r
        return qn_out, r

    @staticmethod
    def backward(ctx, *grads):
        q = ctx.saved_tensors[0]
        with torch.autocast(q.device.type, enabled=False):
            return _NormRouter._backward(ctx, *grads)

    @staticmethod
    def _backward(ctx, *grads):
        q, norm_weight, w_router = ctx.saved_tensors
        if norm_weight is not None:
            dqn_all, dr_all = grads
        else:
            dqn_all, (dr_all,) = None, grads
        B, L, H, D = q.shape
        T, work = B * L, _work_dtype(q)
        flat = q.reshape(T, H, D)
        nw = norm_weight.to(work) if norm_weight is not None else None
        wr = w_router.to(work)
        dq = torch.empty_like(q).view(T, H, D)
        dnw = torch.zeros(H, D, dtype=work, device=q.device) if nw is not None else None
        dwr = torch.zeros_like(wr)
        for lo in range(0, T, ctx.chunk):
            hi = min(lo + ctx.chunk, T)
            n, rstd, qn, g, s = _forward_chunk(flat[lo:hi].to(work), nw, wr, q.dtype)
            grow = s > ROUTER_EPS
            s = s.clamp_min(ROUTER_EPS)
            if dr_all is not None:
                dr = dr_all.reshape(T, H, -1)[lo:hi].to(work)
                dg = (dr - grow * (dr * (g / s)).sum(-1, keepdim=True)) / s
                dp = dg * g * (1 - g)
                dqn = torch.einsum("the,hde->thd", dp, wr)
                dwr += torch.einsum("thd,the->hde", qn, dp)
            else:
                dqn = torch.zeros_like(qn)
            if dqn_all is not None:
                dqn = dqn + dqn_all.reshape(T, H, D)[lo:hi].to(work)
            if nw is None:
                dq[lo:hi] = dqn
                continue
            dnw += (dqn * n).sum(0)
            dn = dqn * nw
            dq[lo:hi] = rstd * (dn - n * (dn * n).mean(-1, keepdim=True))
        return (dq.view(q.shape),
                dnw.to(norm_weight.dtype) if dnw is not None else None,
                dwr.to(w_router.dtype), None)


def norm_router(q: torch.Tensor, norm_weight: torch.Tensor | None, w_router: torch.Tensor,
                chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q normalised per head in q's dtype, or q itself without norm_weight; R in fp32).

    q: (B, L, H, D); norm_weight: (H, D) or None; w_router: (H, D, E). Same values as
    reference.rms_norm_heads then reference.router; memory as the module docstring says.
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if norm_weight is None:
        return q, _NormRouter.apply(q, None, w_router, chunk)
    return _NormRouter.apply(q, norm_weight, w_router, chunk)
