"""The FlashMHF forward written in Helion: the kernel body and its `helion.kernel` wrapper.

Imports Helion at module import; mhfgen.peers.helion_fwd imports this module only when a
Helion row is benchmarked, so mhfgen runs without Helion installed.

    o[t, h] = sum_e r[t, h, e] * (silu(q[t, h] K[g, e]^T) * (q[t, h] U[g, e]^T)) V[g, e],
    g = h // (H / Hkv)

Layout: q, o (B, L, H, D); k, u, v (Hkv, E, De, D); r (B, L, H, E), fp32 or q's dtype.
Schedule as written (Helion's autotuner picks block sizes, loop orders, unrolling,
indexing (pointers or tensor descriptors), eviction policies, multi-buffering, warps,
stages and the program layout): one program per (tile of tokens, query head); q's tile stays
in registers; the loops walk the experts and, inside one, De in tiles; the two score tiles
(tokens x tile of De) are fp32 dots, p = silu(s) * a * r_e is formed in fp32 and cast to
q's dtype for the p V dot, which accumulates o's tile in fp32. Nothing of size I per token
is written to memory.
"""

from __future__ import annotations

import helion
import helion.language as hl
import torch


def flash_mhf_fwd(
    q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """The Helion kernel body (wrapped by `make_kernel`); shapes in the module docstring."""
    B, L, H, D = q.shape
    Hkv, E, De, _ = k.shape
    H = hl.specialize(H)
    Hkv = hl.specialize(Hkv)
    D = hl.specialize(D)
    E = hl.specialize(E)
    De = hl.specialize(De)
    group = H // Hkv
    rows = q.reshape([-1, H, D])  # (B * L, H, D)
    gates = r.reshape([-1, H, E])
    out = torch.empty_like(rows)
    # the token tiles are the fast grid dimension: the programs of one head run together and
    # share that head's weight tiles in L2
    for tile_t, tile_h in hl.tile([rows.size(0), H], block_size=[None, 1]):
        h = tile_h.begin
        g = h // group
        q_tile = rows[tile_t, h, :]
        acc = hl.zeros([tile_t, D], dtype=torch.float32)
        for e in hl.grid(E):
            r_e = gates[tile_t, h, e].to(torch.float32)
            for tile_j in hl.tile(De):
                s = hl.dot(q_tile, k[g, e, tile_j, :].T, out_dtype=torch.float32)
                a = hl.dot(q_tile, u[g, e, tile_j, :].T, out_dtype=torch.float32)
                v_tile = v[g, e, tile_j, :]
                p = s * torch.sigmoid(s) * a * r_e[:, None]
                acc = hl.dot(p.to(v_tile.dtype), v_tile, acc=acc)
        out[tile_t, h, :] = acc.to(out.dtype)
    return out.view(q.shape)


def make_kernel(effort: str, budget_s: int, ieee: bool):
    """`helion.kernel` of the body: shapes specialised (static_shapes), the autotuner at
    `effort` ('none': Helion's default config, no search) within about `budget_s` seconds;
    IEEE fp32 dots when `ieee` (the fp32 problems), else Helion's default dot precision."""
    settings = dict(
        static_shapes=True,
        autotune_effort=effort,
        autotune_budget_seconds=budget_s,
        autotune_progress_bar=False,
        # candidates are checked against the default config's output; bf16 rows
        # of different schedules differ by rounding, not by 1e-3
        autotune_baseline_atol=2e-2,
        autotune_baseline_rtol=2e-2,
    )
    if ieee:
        settings["dot_precision"] = "ieee"
    return helion.kernel(flash_mhf_fwd, **settings)
