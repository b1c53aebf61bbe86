"""Launcher of the generated dK/dU/dV backward kernel (templates/flash_mhf_bwd_dkv.py.jinja)."""
from __future__ import annotations

import torch

from ..codegen import load_kernel
from ..spec import LaunchConfig
from ..validation import check_flash_mhf_inputs
from .common import cdiv, empty, intermediate_blocks, resolve_config, spec_of, unit_last_stride

KERNEL = "flash_mhf_bwd_dkv"


def flash_mhf_bwd_dkv(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                      r: torch.Tensor, do: torch.Tensor, config: LaunchConfig | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D).

    Each (Hkv, E, De, D), contiguous, in k's dtype. With token_splits = S > 1 the tokens
    are split over S programs per weight tile, whose fp32 partials meet by atomic adds in
    a zeroed fp32 buffer (the outputs themselves when the dtype is fp32). With split_grads
    two kernels run: dK and dU, then dV.
    """
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    if do.shape != q.shape:
        raise ValueError(f"do must have q's shape {tuple(q.shape)}, got {tuple(do.shape)}")
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    if problem.tokens == 0:
        return tuple(torch.zeros(k.shape, dtype=k.dtype, device=k.device) for _ in range(3))
    k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    do = unit_last_stride(do.to(q.dtype))
    rows = problem.tokens * spec.group
    per_split = cdiv(cdiv(rows, config.token_splits), config.block_m) * config.block_m
    splits = cdiv(rows, per_split)
    atomic = config.token_splits > 1
    out_dtype = torch.float32 if atomic else k.dtype
    # three separate buffers: outputs of a custom op may not alias each other
    grads = [torch.zeros(k.shape, dtype=out_dtype, device=k.device) if atomic
             else empty(k.shape, out_dtype, k.device) for _ in range(3)]
    grid = (intermediate_blocks(spec, config.block_n), spec.kv_heads, splits)
    args = (q, k, u, v, r, do, grads[0], grads[1], grads[2],
            q.stride(0), q.stride(1), q.stride(2),
            r.stride(0), r.stride(1), r.stride(2), r.stride(3),
            do.stride(0), do.stride(1), do.stride(2),
            q.shape[1], rows, per_split)
    entries = (f"{KERNEL}_kernel", f"{KERNEL}_dv_kernel") if config.split_grads else (None,)
    for entry in entries:
        kernel = load_kernel(KERNEL, spec, config, entry)
        kernel[grid](*args, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                     num_warps=config.num_warps, num_stages=config.num_stages)
    dk, du, dv = (g.to(k.dtype) for g in grads)
    return dk, du, dv
