"""Launcher of the generated forward kernel (templates/flash_mhf_fwd.py.jinja)."""
from __future__ import annotations

import torch

from ..codegen import load_kernel
from ..spec import LaunchConfig
from ..validation import check_flash_mhf_inputs
from .common import cdiv, empty, ensure_descriptor_allocator, intermediate_blocks, resolve_config, spec_of

KERNEL = "flash_mhf_fwd"


def flash_mhf_fwd(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  r: torch.Tensor, config: LaunchConfig | None = None) -> torch.Tensor:
    """o = FlashMHF(q, k, u, v, r) through the generated forward kernel.

    q: (B, L, H, D) with unit last stride; k/u/v: (Hkv, E, De, D); r: (B, L, H, E) fp32 or
    q's dtype. Returns o (B, L, H, D), contiguous, in q's dtype. `config` overrides the
    dispatcher's choice. With inter_splits = S > 1, S programs share a row block's
    intermediate dimension and write fp32 partials (S, B, L, H, D), summed here.
    """
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    B, L, H, D = q.shape
    o = empty((B, L, H, D), q.dtype, q.device)
    if problem.tokens == 0:
        return o
    k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
    rows = problem.tokens * config.group_heads
    units = (intermediate_blocks(spec, config.block_n) if spec.expert_dim % config.block_n == 0
             else spec.experts)  # what the splits divide: tiles, or experts
    # no split left empty: ceil(units / ceil(units / S)) splits of ceil(units / S) units
    splits = cdiv(units, cdiv(units, min(config.inter_splits, units)))
    grid = (cdiv(rows, config.block_m), H // config.group_heads, splits)
    out = o if config.inter_splits == 1 else empty((splits, B, L, H, D), torch.float32, q.device)
    out_strides = (out.stride(-4), out.stride(-3), out.stride(-2))
    extra = () if config.inter_splits == 1 else (out.stride(0),)
    kernel[grid](q, k, u, v, r, out,
                 q.stride(0), q.stride(1), q.stride(2),
                 r.stride(0), r.stride(1), r.stride(2), r.stride(3),
                 *out_strides, *extra,
                 L, rows,
                 BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                 num_warps=config.num_warps, num_stages=config.num_stages)
    if config.inter_splits > 1:
        torch.sum(out, dim=0, out=o) if q.dtype == torch.float32 else o.copy_(out.sum(0))
    return o
