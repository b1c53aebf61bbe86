"""FlashMHF in plain PyTorch: the definition every test and benchmark compares against.

docs/CONTRACTS.md, section 1. Works in any floating dtype, float64 included, on any device. It
materialises the (B, L, H, I) activation: this is the naive form the kernels avoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import check_flash_mhf_inputs

RMS_EPS = 1e-5
ROUTER_EPS = 1e-20


def flash_mhf(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """The FlashMHF core.

    O[b,l,h] = sum_e r[b,l,h,e] * (silu(q[b,l,h] K[g,e]^T) * (q[b,l,h] U[g,e]^T)) V[g,e]
    with g = h // (H / Hkv). q: (B, L, H, D); k, u, v: (Hkv, E, De, D); r: (B, L, H, E).
    Computed in q's dtype (r cast to it); returns (B, L, H, D) in q's dtype.
    """
    p = check_flash_mhf_inputs(q, k, u, v, r, allow_float64=True)
    group = p.heads // p.kv_heads
    kk, uu, vv = (w.repeat_interleave(group, dim=0) for w in (k, u, v))  # (H, E, De, D)
    s = torch.einsum("blhd,hend->blhen", q, kk)
    a = torch.einsum("blhd,hend->blhen", q, uu)
    h = F.silu(s) * a * r.to(q.dtype).unsqueeze(-1)
    return torch.einsum("blhen,hend->blhd", h, vv)


def rms_norm_heads(q: torch.Tensor, weight: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """Per-head RMSNorm of q (B, L, H, D) with weight (H, D), computed in float32."""
    with torch.autocast(q.device.type, enabled=False):  # fp32 also under autocast
        qf = q.float() if q.dtype != torch.float64 else q
        normed = qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + eps)
        return (normed * weight.to(normed.dtype)).to(q.dtype)


def router(q: torch.Tensor, w_router: torch.Tensor) -> torch.Tensor:
    """Routing weights R = sigmoid(P) / max(sum_e sigmoid(P), 1e-20), P = einsum(q, W_R).

    q: (B, L, H, D), w_router: (H, D, E); returns (B, L, H, E) in float32 (float64 for
    float64 input).
    """
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    with torch.autocast(q.device.type, enabled=False):  # fp32 also under autocast
        logits = torch.einsum("blhd,hde->blhe", q.to(work), w_router.to(work))
        gates = torch.sigmoid(logits)
        return gates / gates.sum(-1, keepdim=True).clamp_min(ROUTER_EPS)


def flash_mhf_layer(
    x: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    w_router: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    b_in: torch.Tensor | None = None,
    b_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The whole layer: y = O.view(B, L, d) W_out^T, O = flash_mhf(Q, K, U, V, R).

    x: (B, L, d); w_in, w_out: (d, d); w_router: (H, D, E); k/u/v: (Hkv, E, De, D);
    norm_weight: (H, D) or None (no RMSNorm of Q).
    """
    B, L, d = x.shape
    H, D, _ = w_router.shape
    q = F.linear(x, w_in, b_in).view(B, L, H, D)
    if norm_weight is not None:
        q = rms_norm_heads(q, norm_weight)
    r = router(q, w_router)
    o = flash_mhf(q, k, u, v, r)
    return F.linear(o.reshape(B, L, d), w_out, b_out)
