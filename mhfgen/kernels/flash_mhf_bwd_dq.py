"""Launcher of the generated dQ/dR backward kernel (templates/flash_mhf_bwd_dq.py.jinja)."""
from __future__ import annotations

import torch

from ..codegen import load_kernel
from ..spec import LaunchConfig
from ..validation import check_flash_mhf_inputs
from .common import cdiv, empty, ensure_descriptor_allocator, resolve_config, spec_of, unit_last_stride

KERNEL = "flash_mhf_bwd_dq"


def flash_mhf_bwd_dq(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                     r: torch.Tensor, do: torch.Tensor, config: LaunchConfig | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dq, dr) of FlashMHF for the output gradient `do` (B, L, H, D).

    dq: (B, L, H, D) contiguous in q's dtype; dr: (B, L, H, E) contiguous in r's dtype.
    """
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    if do.shape != q.shape:
        raise ValueError(f"do must have q's shape {tuple(q.shape)}, got {tuple(do.shape)}")
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    B, L, H, D = q.shape
    dq = empty((B, L, H, D), q.dtype, q.device)
    dr = empty(r.shape, r.dtype, r.device)
    if problem.tokens == 0:
        return dq, dr
    k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    do = unit_last_stride(do.to(q.dtype))
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
    rows = problem.tokens * config.group_heads
    grid = (cdiv(rows, config.block_m), H // config.group_heads)
    kernel[grid](q, k, u, v, r, do, dq, dr,
                 q.stride(0), q.stride(1), q.stride(2),
                 r.stride(0), r.stride(1), r.stride(2), r.stride(3),
                 do.stride(0), do.stride(1), do.stride(2),
                 dq.stride(0), dq.stride(1), dq.stride(2),
                 dr.stride(0), dr.stride(1), dr.stride(2), dr.stride(3),
                 L, rows,
                 BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                 num_warps=config.num_warps, num_stages=config.num_stages)
    return dq, dr
