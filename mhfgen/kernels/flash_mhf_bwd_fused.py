"""Launcher of the one-pass backward kernel (templates/flash_mhf_bwd_fused.py.jinja).

The kv heads are taken head_chunk at a time, one launch per chunk. dq's partial sums (over
the I / BLOCK_N programs of a kv head) meet by fp32 atomics in a workspace of the chunk's
query heads, zeroed before and cast into dq after each launch; so the workspace is
tokens * head_chunk * (H / Hkv) * D floats whatever H is (mhfgen.variants.
flash_mhf_bwd_fused.workspace_budget bounds it). Where q is fp32 the atomics go to dq itself.
dr is stored directly where one tile covers an expert, else summed by atomics (into dr
itself when r is fp32). dK/dU/dV are stored directly, or with token splits summed in an
fp32 workspace of the chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codegen import load_kernel
from ..tiling import cdiv, intermediate_blocks
from ..validation import check_flash_mhf_inputs
from ..variants.flash_mhf_bwd_fused import dr_atomic, kv_heads_per_launch
from .buffers import contiguous_strides, empty, ensure_descriptor_allocator, grad_plan_inputs
from .configs import first_launch, resolve_config, spec_of
from .launch import DirectLaunch
from .plans import plan_cache, plan_key, remember

KERNEL = "flash_mhf_bwd_fused"


@dataclass(frozen=True)
class Chunk:
    """One launch: kv heads [kv0, kv0 + n) and its query heads [h0, h0 + n * group)."""

    kv0: int
    n: int
    h0: int
    h1: int
    launch: object  # DirectLaunch, or any callable taking the same tensors


@dataclass(frozen=True)
class FusedPlan:
    """What a call's signature decides, computed once (see kernels.plans.signature)."""

    chunks: tuple  # Chunk per launch; () when there are no tokens
    dq_shape: tuple
    dr_shape: tuple
    dq_direct: bool  # fp32: the atomics add into dq itself (zeroed)
    dr_mode: str  # 'store' | 'atomic' (into dr, fp32) | 'workspace' (fp32, cast after)
    dkv_workspace: bool  # token splits in a narrow dtype: fp32 partials, cast after
    dkv_atomic: bool  # token splits: the gradients are sums of partials (zeroed)
    copy_weights: bool  # k/u/v need a contiguous copy
    copy_do: bool  # dO needs a contiguous copy in q's dtype
    copy_q: bool = False  # tma: q's batch does not fold into its sequence, copy it


_plans = plan_cache()


def flash_mhf_bwd_fused(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                        r: torch.Tensor, do: torch.Tensor, config=None
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
    plan, out = first_launch(KERNEL, lambda c: _make_plan(q, k, u, v, r, do, c),
                             lambda p: run_chunks(p, q, k, u, v, r, do), (q, k, u, v, r),
                             config)
    remember(_plans, key, plan)
    return out


def run_chunks(plan: FusedPlan, q, k, u, v, r, do) -> tuple[torch.Tensor, ...]:
    """Allocate the gradients and workspaces, launch chunk by chunk (each chunk's launch
    takes q, k, u, v, r, do, then the chunk's dq, dr, dk, du, dv buffers); shared with
    the Gluon one-pass backward (mhfgen.kernels.flash_mhf_bwd_ws)."""
    dev = q.device
    if not plan.chunks:
        zeros = [torch.zeros(k.shape, dtype=k.dtype, device=dev) for _ in range(3)]
        return (torch.zeros(plan.dq_shape, dtype=q.dtype, device=dev),
                torch.zeros(plan.dr_shape, dtype=r.dtype, device=dev), *zeros)
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    if plan.copy_do:
        do = do.to(q.dtype).contiguous()
    if plan.copy_q:
        q = q.contiguous()
    B, L, H, D = plan.dq_shape
    E = plan.dr_shape[-1]
    first = plan.chunks[0]
    width = first.h1 - first.h0  # query heads of the widest chunk
    if plan.dq_direct:
        dq = torch.zeros(plan.dq_shape, dtype=q.dtype, device=dev)
        dq_ws = None
    else:
        dq = empty(plan.dq_shape, q.dtype, dev)
        dq_ws = torch.empty((B, L, width, D), dtype=torch.float32, device=dev)
    dr_ws = None
    if plan.dr_mode == "atomic":
        dr = torch.zeros(plan.dr_shape, dtype=r.dtype, device=dev)
    else:
        dr = empty(plan.dr_shape, r.dtype, dev)
        if plan.dr_mode == "workspace":
            dr_ws = torch.empty((B, L, width, E), dtype=torch.float32, device=dev)
    if plan.dkv_atomic and not plan.dkv_workspace:  # fp32 partial sums straight into them
        grads = [torch.zeros(k.shape, dtype=k.dtype, device=dev) for _ in range(3)]
    else:
        grads = [empty(k.shape, k.dtype, dev) for _ in range(3)]
    dkv_ws = None
    if plan.dkv_workspace:
        dkv_ws = [torch.empty((first.n, *k.shape[1:]), dtype=torch.float32, device=dev)
                  for _ in range(3)]
    for chunk in plan.chunks:
        hq = chunk.h1 - chunk.h0
        if dq_ws is not None:
            dq_c = dq_ws[:, :, :hq]
            dq_c.zero_()
        else:
            dq_c = dq
        if dr_ws is not None:
            dr_c = dr_ws[:, :, :hq]
            dr_c.zero_()
        else:
            dr_c = dr
        if dkv_ws is not None:
            outs = [w[:chunk.n] for w in dkv_ws]
            for w in outs:
                w.zero_()
        else:
            outs = [g[chunk.kv0:chunk.kv0 + chunk.n] for g in grads]
        chunk.launch(q, k, u, v, r, do, dq_c, dr_c, *outs)
        if dq_ws is not None:
            dq[:, :, chunk.h0:chunk.h1].copy_(dq_c)
        if dr_ws is not None:
            dr[:, :, chunk.h0:chunk.h1].copy_(dr_c)
        if dkv_ws is not None:
            for g, w in zip(grads, outs):
                g[chunk.kv0:chunk.kv0 + chunk.n].copy_(w)
    return (dq, dr, *grads)


def _make_plan(q, k, u, v, r, do, config) -> FusedPlan:
    """Check the inputs, choose the config and compile: everything but the launches."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    copy_do, do_strides = grad_plan_inputs(q, do)
    spec = spec_of(problem, q)
    config = resolve_config(KERNEL, spec, problem, q, config)
    B, L, H, D = q.shape
    E = r.shape[-1]
    fp32 = q.dtype == torch.float32
    atomic_dr = dr_atomic(spec, config)
    dr_mode = "store" if not atomic_dr else ("atomic" if r.dtype == torch.float32
                                              else "workspace")
    splits_wanted = config.token_splits > 1
    plan_args = dict(dq_shape=(B, L, H, D), dr_shape=(B, L, H, E), dq_direct=fp32,
                     dr_mode=dr_mode, dkv_workspace=splits_wanted and not fp32,
                     dkv_atomic=splits_wanted,
                     copy_weights=not (k.is_contiguous() and u.is_contiguous()
                                       and v.is_contiguous()),
                     copy_do=copy_do)
    if problem.tokens == 0:
        return FusedPlan(chunks=(), **plan_args)
    kernel = load_kernel(KERNEL, spec, config)
    if config.tma:
        ensure_descriptor_allocator(q.device)
        # the descriptors see (B * L, H, D): the batch must fold into the sequence
        copy_q = q.shape[0] > 1 and q.stride(0) != L * q.stride(1)
        if copy_do or (do.shape[0] > 1 and do.stride(0) != L * do.stride(1)):
            copy_do, do_strides = True, contiguous_strides(tuple(do.shape))[:3]
    else:
        copy_q = False
    plan_args.update(copy_q=copy_q, copy_do=copy_do)
    if copy_q:
        q_strides = contiguous_strides(tuple(q.shape))[:3]
    else:
        q_strides = q.stride()[:3]
    group = spec.group
    per_launch = kv_heads_per_launch(spec, config)
    rows = problem.tokens * group
    per_split = cdiv(cdiv(rows, config.token_splits), config.block_m) * config.block_m
    splits = cdiv(rows, per_split)
    width = per_launch * group
    dq_strides = contiguous_strides((B, L, H if fp32 else width, D))[:3]
    dr_strides = contiguous_strides((B, L, width if dr_mode == "workspace" else H, E))
    meta = dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                num_warps=config.num_warps, num_stages=config.num_stages)
    chunks = []
    for kv0 in range(0, spec.kv_heads, per_launch):
        n = min(per_launch, spec.kv_heads - kv0)
        h0, h1 = kv0 * group, (kv0 + n) * group
        scalars = (*q_strides,
                   r.stride(0), r.stride(1), r.stride(2), r.stride(3),
                   *do_strides, *dq_strides, *dr_strides,
                   L, rows, per_split, kv0,
                   0 if fp32 else h0, h0 if dr_mode == "workspace" else 0,
                   H if fp32 else width)
        grid = (intermediate_blocks(spec, config.block_n), n, splits)
        chunks.append(Chunk(kv0, n, h0, h1, DirectLaunch(kernel, grid, scalars, meta)))
    return FusedPlan(chunks=tuple(chunks), **plan_args)
