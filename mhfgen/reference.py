"""FlashMHF in plain PyTorch: the definition every test and benchmark compares against.

docs/CONTRACTS.md, section 1. Works in any floating dtype, float64 included, on any device. It
materialises the (B, L, H, I) activation: this is the naive form the kernels avoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fp8 import expert_bounds
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


def flash_mhf_w8a8(
    q: torch.Tensor,
    k8: torch.Tensor,
    u8: torch.Tensor,
    v8: torch.Tensor,
    r: torch.Tensor,
    scales: torch.Tensor,
    block_n: int,
    splits: int = 1,
    act_scale: str = "running",
) -> torch.Tensor:
    """FlashMHF in FP8 arithmetic (W8A8) as flash_mhf_fwd_fp8_ws computes it, emulated in
    float64: every e4m3 rounding the kernel makes, none of its fp32 ones.

    q: (B, L, H, D); k8, u8, v8: (Hkv, E, De, D) float8_e4m3fn; r: (B, L, H, E); scales:
    (3, Hkv, E, De) float32, the rows' scales of K, U and V (mhfgen.fp8); block_n divides
    De. Per (token, head) row:
        1. s_q = max_d |q| / 448, q8 = e4m3(q * 448 / max_d |q|) (0 for a zero row)
        2. for each weight tile j of block_n rows, expert-major (the kernel's order):
           S = (q8 K8_j^T) s_q k_scale, G = (q8 U8_j^T) s_q u_scale,
           p' = silu(S) G r_e v_scale
        3. m_new = max(m, max_col |p'|) (m = 0 at first); O *= m / m_new (1 where m_new = 0);
           O += e4m3(p' * 448 / m_new) V8_j (0 where m_new = 0); m = m_new
        4. o = O m / 448.
    With `splits` (the kernel's inter_splits, as its launcher evens them out: ceil(T / c)
    splits of c = ceil(T / splits) of the T = I / block_n tiles), steps 2-4 run per split
    on its own tiles, each with its own running maximum, and o is the sum of the splits'.

    act_scale='bound' (the kernel's field of that name) replaces the running maximum by a
    bound fixed before the first tile: M = pow2ceil(|q~|^2 max_e |r_e| c_e (1 + 2^-8)),
    with |q~|^2 = s_q^2 sum_d q8^2 the dequantised row's squared norm and c the experts'
    bounds (mhfgen.fp8.expert_bounds), rounded up to a power of two; step 3 becomes
    O += e4m3(p' * 448 / M) V8 (0 where M = 0) and step 4 o = O M / 448, the same M in
    every split. |p'| <= M always (so no activation saturates), and the scaling by a
    power of two is exact.
    Returns o (B, L, H, D) in float64.
    """
    if act_scale not in ("running", "bound"):
        raise ValueError(f"act_scale must be 'running' or 'bound', got {act_scale!r}")
    p = check_flash_mhf_inputs(q, k8, u8, v8, r)
    if p.expert_dim % block_n:
        raise ValueError(f"block_n={block_n} must divide expert_dim={p.expert_dim}")
    fp8 = k8.dtype
    top = torch.finfo(fp8).max  # 448: a row's scale maps its largest |x| to it
    group = p.heads // p.kv_heads
    q64 = q.double()
    amax = q64.abs().amax(-1, keepdim=True)
    q8 = (q64 * torch.where(amax > 0, top / amax, 0.0)).to(fp8).double()
    s_q = amax / top  # (B, L, H, 1)
    k, u, v = (w.double().repeat_interleave(group, dim=0) for w in (k8, u8, v8))
    ks, us, vs = (s.double().repeat_interleave(group, dim=0) for s in scales)  # (H, E, De)
    r64 = r.double()
    tiles = [(e, n0) for e in range(p.experts) for n0 in range(0, p.expert_dim, block_n)]
    per = -(-len(tiles) // min(splits, len(tiles)))
    if act_scale == "bound":
        c = expert_bounds(k8, u8, scales).double().repeat_interleave(group, dim=0)  # (H, E)
        q_norm2 = (q8 * q8).sum(-1, keepdim=True) * s_q * s_q
        bound = q_norm2 * (r64.abs() * c).amax(-1, keepdim=True) * (1 + 2.0**-8)
        bound = torch.where(bound > 0, 2.0 ** torch.ceil(torch.log2(bound)), 0.0)
    out = torch.zeros_like(q64)
    for first in range(0, len(tiles), per):
        acc = torch.zeros_like(q64)
        m = torch.zeros_like(s_q) if act_scale == "running" else bound
        for e, n0 in tiles[first : first + per]:
            cols = slice(n0, n0 + block_n)
            s = torch.einsum("blhd,hnd->blhn", q8, k[:, e, cols]) * s_q * ks[:, e, cols]
            g = torch.einsum("blhd,hnd->blhn", q8, u[:, e, cols]) * s_q * us[:, e, cols]
            act = F.silu(s) * g * r64[..., e : e + 1] * vs[:, e, cols]
            if act_scale == "running":
                m_new = torch.maximum(m, act.abs().amax(-1, keepdim=True))
                acc = acc * torch.where(m_new > 0, m / m_new, 1.0)
            else:
                m_new = m
            p8 = (act * torch.where(m_new > 0, top / m_new, 0.0)).to(fp8).double()
            acc = acc + torch.einsum("blhn,hnd->blhd", p8, v[:, e, cols])
            m = m_new
        out = out + acc * (m / top)
    return out


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
