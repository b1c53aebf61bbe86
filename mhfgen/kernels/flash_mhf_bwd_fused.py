"""Launcher of the Triton-language one-pass backward kernel
(templates/flash_mhf_bwd_fused.py.jinja): one DirectLaunch per chunk of kv heads, run by
mhfgen.kernels.bwd_chunks (which holds how the outputs and workspaces are handled).
"""

from __future__ import annotations

import torch

from ..codegen import load_kernel
from ..tiling import cdiv, intermediate_blocks
from ..validation import check_flash_mhf_inputs
from ..workspace import kv_heads_per_launch
from .buffers import contiguous_strides, ensure_descriptor_allocator, grad_plan_inputs
from .bwd_chunks import Chunk, ChunkPlan, head_chunks, plan_fields, run_chunks
from .configs import first_launch, resolve_config, spec_of
from .launch import DirectLaunch
from .plans import plan_cache, plan_key, remember

KERNEL = "flash_mhf_bwd_fused"

_plans = plan_cache()


def flash_mhf_bwd_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    r: torch.Tensor,
    do: torch.Tensor,
    config=None,
) -> tuple[torch.Tensor, ...]:
    """(dq, dr, dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D).

    dq: (B, L, H, D) contiguous in q's dtype; dr: (B, L, H, E) contiguous in r's dtype;
    dk, du, dv: (Hkv, E, De, D) contiguous in k's dtype. dq (and dr where an expert spans
    several tiles) are sums of fp32 atomics: not bitwise reproducible run to run.
    """
    key = plan_key(config, q, k, u, v, r, do)
    plan = _plans.get(key)
    if plan is not None:
        return run_chunks(plan, q, k, u, v, r, do)
    plan, out = first_launch(
        KERNEL,
        lambda c: _make_plan(q, k, u, v, r, do, c),
        lambda p: run_chunks(p, q, k, u, v, r, do),
        (q, k, u, v, r),
        config,
    )
    remember(_plans, key, plan)
    return out


def _make_plan(q, k, u, v, r, do, config) -> ChunkPlan:
    """Check the inputs, choose the config and compile: everything but the launches."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    copy_do, do_strides = grad_plan_inputs(q, do)
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    B, L, H, D = q.shape
    E = r.shape[-1]
    fields = plan_fields(spec, config, q, k, u, v, r, copy_do)
    if problem.tokens == 0:
        return ChunkPlan(chunks=(), **fields)
    kernel = load_kernel(KERNEL, spec, config)
    copy_q = False
    if config.tma:
        ensure_descriptor_allocator(q.device)
        # the descriptors see (B * L, H, D): the batch must fold into the sequence
        copy_q = q.shape[0] > 1 and q.stride(0) != L * q.stride(1)
        if copy_do or (do.shape[0] > 1 and do.stride(0) != L * do.stride(1)):
            copy_do, do_strides = True, contiguous_strides(tuple(do.shape))[:3]
    fields.update(copy_q=copy_q, copy_do=copy_do)
    q_strides = contiguous_strides(tuple(q.shape))[:3] if copy_q else q.stride()[:3]
    fp32, dr_workspace = fields["dq_direct"], fields["dr_mode"] == "workspace"
    rows = problem.tokens * spec.group
    per_split = cdiv(cdiv(rows, config.token_splits), config.block_m) * config.block_m
    splits = cdiv(rows, per_split)
    width = kv_heads_per_launch(spec, config) * spec.group
    dq_strides = contiguous_strides((B, L, H if fp32 else width, D))[:3]
    dr_strides = contiguous_strides((B, L, width if dr_workspace else H, E))
    meta = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    chunks = []
    for kv0, n, h0, h1 in head_chunks(spec, config):
        scalars = (
            *q_strides,
            *r.stride(),
            *do_strides,
            *dq_strides,
            *dr_strides,
            L,
            rows,
            per_split,
            kv0,
            0 if fp32 else h0,
            h0 if dr_workspace else 0,
            H if fp32 else width,
        )
        grid = (intermediate_blocks(spec, config.block_n), n, splits)
        chunks.append(Chunk(kv0, n, h0, h1, DirectLaunch(kernel, grid, scalars, meta)))
    return ChunkPlan(chunks=tuple(chunks), **fields)
