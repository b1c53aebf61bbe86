"""What the launchers of the one-pass backward (op `bwd`: mhfgen.variants.flash_mhf_bwd_fused,
flash_mhf_bwd_ws, flash_mhf_bwdt_ws) share: their launch plan, the decisions it records
about the outputs and workspaces (plan_fields), the kv heads of each launch (head_chunks)
and running a plan (run_chunks).

The kv heads are taken head_chunk at a time, one launch per chunk. dq's partial sums (over
the I / BLOCK_N programs of a kv head) meet by fp32 atomics in a workspace of the chunk's
query heads, zeroed before and cast into dq after each launch; where q is fp32 the atomics
go to dq itself. dr is stored directly where one tile covers an expert, else summed by
atomics (into dr itself when r is fp32, else in a workspace). dK/dU/dV are stored directly,
or with token splits summed in an fp32 workspace of the chunk (in fp32: in them). The
workspace's size and budget: mhfgen.workspace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import KernelSpec
from ..workspace import dr_atomic, kv_heads_per_launch
from .buffers import empty, weights_need_copy


@dataclass(frozen=True)
class Chunk:
    """One launch: kv heads [kv0, kv0 + n) and its query heads [h0, h0 + n * group)."""

    kv0: int
    n: int
    h0: int
    h1: int
    launch: object  # DirectLaunch, or any callable taking the same tensors


@dataclass(frozen=True)
class ChunkPlan:
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


def plan_fields(spec: KernelSpec, config, q, k, u, v, r, copy_do: bool) -> dict:
    """The ChunkPlan fields but the chunks (and copy_q) for a call with these tensors:
    which outputs take atomics directly and which need an fp32 workspace."""
    B, L, H, D = q.shape
    fp32 = q.dtype == torch.float32
    splits = config.token_splits > 1
    dr_mode = (
        "store"
        if not dr_atomic(spec, config)
        else ("atomic" if r.dtype == torch.float32 else "workspace")
    )
    return dict(
        dq_shape=(B, L, H, D),
        dr_shape=(B, L, H, r.shape[-1]),
        dq_direct=fp32,
        dr_mode=dr_mode,
        dkv_workspace=splits and not fp32,
        dkv_atomic=splits,
        copy_weights=weights_need_copy(k, u, v),
        copy_do=copy_do,
    )


def head_chunks(spec: KernelSpec, config) -> list[tuple[int, int, int, int]]:
    """(kv0, n, h0, h1) of each launch: kv heads [kv0, kv0 + n), query heads [h0, h1)."""
    per_launch = kv_heads_per_launch(spec, config)
    out = []
    for kv0 in range(0, spec.kv_heads, per_launch):
        n = min(per_launch, spec.kv_heads - kv0)
        out.append((kv0, n, kv0 * spec.group, (kv0 + n) * spec.group))
    return out


def run_chunks(plan: ChunkPlan, q, k, u, v, r, do) -> tuple[torch.Tensor, ...]:
    """Allocate the gradients and workspaces, launch chunk by chunk (each chunk's launch
    takes q, k, u, v, r, do, then the chunk's dq, dr, dk, du, dv buffers)."""
    dev = q.device
    if not plan.chunks:
        zeros = [torch.zeros(k.shape, dtype=k.dtype, device=dev) for _ in range(3)]
        return (
            torch.zeros(plan.dq_shape, dtype=q.dtype, device=dev),
            torch.zeros(plan.dr_shape, dtype=r.dtype, device=dev),
            *zeros,
        )
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
        dkv_ws = [
            torch.empty((first.n, *k.shape[1:]), dtype=torch.float32, device=dev) for _ in range(3)
        ]
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
            outs = [w[: chunk.n] for w in dkv_ws]
            for w in outs:
                w.zero_()
        else:
            outs = [g[chunk.kv0 : chunk.kv0 + chunk.n] for g in grads]
        chunk.launch(q, k, u, v, r, do, dq_c, dr_c, *outs)
        if dq_ws is not None:
            dq[:, :, chunk.h0 : chunk.h1].copy_(dq_c)
        if dr_ws is not None:
            dr[:, :, chunk.h0 : chunk.h1].copy_(dr_c)
        if dkv_ws is not None:
            for g, w in zip(grads, outs):
                g[chunk.kv0 : chunk.kv0 + chunk.n].copy_(w)
    return (dq, dr, *grads)
