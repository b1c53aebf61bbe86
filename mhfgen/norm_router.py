"""The FlashMHF layer's per-head RMSNorm of Q and its router, with activation memory O(chunk).

Forward (docs/CONTRACTS.md, section 1, steps 2 and 3), per token and head, in fp32 whatever
q's dtype:

    x = q,  rstd = 1 / sqrt(mean_d(x^2) + eps),  n = x * rstd,  qn = n * w       (w: (H, D))
    P = qn W_R[h]  (W_R: (H, D, E)),  g = sigmoid(P),  s = max(sum_e g, 1e-20),  R = g / s

Backward, given dqn (from the core, plus nothing else) and dR (from the core):

    dg = (dR - [sum_e g > 1e-20] * sum_e(dR * R)) / s        dP = dg * g * (1 - g)
    dqn' = dqn + dP W_R[h]^T                                   dW_R[h] += qn^T dP
    dw += sum_tokens dqn' * n                                  dn = dqn' * w
    dx = rstd * (dn - n * mean_d(dn * n))

Autograd of the plain PyTorch form (mhfgen.reference.rms_norm_heads and router) keeps
several fp32 copies of Q for the backward: at 16384 tokens and d = 2048 each is 128 MiB,
more than the whole fused core needs. Here only q (its own dtype) is saved, by both paths:

* kernels (CUDA tensors by default; CPU tensors through Triton's interpreter when asked
  with use_kernels=True): two fused Triton kernels (mhfgen.kernels.norm_router), one
  launch each way, behind the custom ops `mhfgen::norm_router` and
  `mhfgen::norm_router_backward` (fake implementations for tracing, registered autograd;
  torch.compile(fullgraph=True) sees them as opaque calls); eager calls skip the ops'
  dispatch (no gradient: the launcher alone; gradients: the same launchers through a
  torch.autograd.Function, mhfgen.ops.eager_autograd_call). The backward recomputes the
  forward per block of tokens in registers; its only fp32 temporaries are the weight
  gradients' partial sums, (SPLITS, H, D, E) and (SPLITS, H, D). Without a norm weight the
  forward op returns an empty tensor in qn's place (custom ops cannot return None nor an
  input) and norm_router returns q itself.
* PyTorch (CPU tensors by default, float64 always, use_kernels=False): the
  torch.autograd.Function below; both passes walk the tokens in chunks of `chunk`, so
  fp32 temporaries are (chunk, H, D).

Both give the reference's values (tests/test_norm_router.py checks values and gradients,
gradcheck in float64; tests/test_norm_router_kernels.py checks the kernels against it).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .ops import eager_autograd_call, plain_eager_call
from .reference import RMS_EPS, ROUTER_EPS

#: tokens per chunk: fp32 temporaries of (CHUNK, H, D) elements
CHUNK = 4096


def _work_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _forward_chunk(
    x: torch.Tensor, norm_weight, w_router: torch.Tensor, dtype: torch.dtype, eps: float
):
    """x: (T, H, D) in the work dtype -> (n, rstd, qn, g, s) of the formulas above; qn is
    rounded to `dtype` (q's), as the core and the reference's router see it."""
    if norm_weight is not None:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
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
    def forward(ctx, q, norm_weight, w_router, chunk, eps):
        with torch.autocast(q.device.type, enabled=False):
            return _NormRouter._forward(ctx, q, norm_weight, w_router, chunk, eps)

    @staticmethod
    def _forward(ctx, q, norm_weight, w_router, chunk, eps):
        B, L, H, D = q.shape
        work = _work_dtype(q)
        flat = q.reshape(B * L, H, D)
        contiguous = torch.contiguous_format  # q may be a permuted view
        qn_out = torch.empty_like(q, memory_format=contiguous) if norm_weight is not None else None
        r = torch.empty(B, L, H, w_router.shape[-1], dtype=work, device=q.device)
        r_flat = r.view(B * L, H, -1)
        qn_flat = qn_out.view(B * L, H, D) if qn_out is not None else None
        nw = norm_weight.to(work) if norm_weight is not None else None
        wr = w_router.to(work)
        for lo in range(0, B * L, chunk):
            _, _, qn, g, s = _forward_chunk(flat[lo : lo + chunk].to(work), nw, wr, q.dtype, eps)
            r_flat[lo : lo + chunk] = g / s.clamp_min(ROUTER_EPS)
            if qn_flat is not None:
                qn_flat[lo : lo + chunk] = qn
        ctx.save_for_backward(q, norm_weight, w_router)
        ctx.chunk, ctx.eps = chunk, eps
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
        dq = torch.empty_like(q, memory_format=torch.contiguous_format).view(T, H, D)
        dnw = torch.zeros(H, D, dtype=work, device=q.device) if nw is not None else None
        dwr = torch.zeros_like(wr)
        for lo in range(0, T, ctx.chunk):
            hi = min(lo + ctx.chunk, T)
            n, rstd, qn, g, s = _forward_chunk(flat[lo:hi].to(work), nw, wr, q.dtype, ctx.eps)
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
        return (
            dq.view(q.shape),
            dnw.to(norm_weight.dtype) if dnw is not None else None,
            dwr.to(w_router.dtype),
            None,
            None,
        )


#: dtypes the kernels take (q, norm_weight and w_router); float64 runs the PyTorch path
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@torch.library.custom_op("mhfgen::norm_router", mutates_args=())
def _norm_router_op(
    q: torch.Tensor, norm_weight: torch.Tensor | None, w_router: torch.Tensor, eps: float = RMS_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    from .kernels.norm_router import norm_router_fwd  # lazily: the PyTorch path needs no Triton

    qn, r = norm_router_fwd(q, norm_weight, w_router, eps=eps)
    return (qn if norm_weight is not None else q.new_empty(0)), r


@_norm_router_op.register_fake
def _(q, norm_weight, w_router, eps=RMS_EPS):
    B, L, H, _ = q.shape
    qn = q.new_empty(q.shape) if norm_weight is not None else q.new_empty(0)
    return qn, q.new_empty((B, L, H, w_router.shape[-1]), dtype=torch.float32)


@torch.library.custom_op("mhfgen::norm_router_backward", mutates_args=())
def _norm_router_backward_op(
    q: torch.Tensor,
    norm_weight: torch.Tensor | None,
    w_router: torch.Tensor,
    dqn: torch.Tensor | None,
    dr: torch.Tensor | None,
    eps: float = RMS_EPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .kernels.norm_router import norm_router_bwd

    dq, dnw, dwr = norm_router_bwd(q, norm_weight, w_router, dqn, dr, eps=eps)
    return dq, (dnw if dnw is not None else q.new_empty(0)), dwr


@_norm_router_backward_op.register_fake
def _(q, norm_weight, w_router, dqn, dr, eps=RMS_EPS):
    dnw = norm_weight.new_empty(norm_weight.shape) if norm_weight is not None else q.new_empty(0)
    return q.new_empty(q.shape), dnw, w_router.new_empty(w_router.shape)


def _setup_context(ctx, inputs, output):
    q, norm_weight, w_router, eps = inputs
    ctx.has_norm, ctx.eps = norm_weight is not None, eps
    ctx.save_for_backward(q, norm_weight, w_router)


def _backward(ctx, dqn, dr):
    q, norm_weight, w_router = ctx.saved_tensors
    if not ctx.has_norm:
        dqn = None  # the gradient of the empty placeholder output
    dq, dnw, dwr = _norm_router_backward_op(q, norm_weight, w_router, dqn, dr, ctx.eps)
    return dq, (dnw if ctx.has_norm else None), dwr, None


_norm_router_op.register_autograd(_backward, setup_context=_setup_context)


class _NormRouterKernels(torch.autograd.Function):
    """norm_router's eager autograd on the kernels (mhfgen.ops.eager_autograd_call): the
    launchers of the ops `mhfgen::norm_router` forward and `mhfgen::norm_router_backward`
    backward, without the ops' dispatch. Returns (qn, R), or (R,) without norm_weight."""

    @staticmethod
    def forward(ctx, q, norm_weight, w_router, eps):
        from .kernels.norm_router import norm_router_fwd

        qn, r = norm_router_fwd(q, norm_weight, w_router, eps=eps)
        ctx.has_norm, ctx.eps = norm_weight is not None, eps
        ctx.save_for_backward(q, norm_weight, w_router)
        return (qn, r) if ctx.has_norm else (r,)

    @staticmethod
    @once_differentiable  # as the op: its backward has no derivative of its own
    def backward(ctx, *grads):
        from .kernels.norm_router import norm_router_bwd

        q, norm_weight, w_router = ctx.saved_tensors
        dqn, dr = grads if ctx.has_norm else (None, grads[0])
        dq, dnw, dwr = norm_router_bwd(q, norm_weight, w_router, dqn, dr, eps=ctx.eps)
        return dq, dnw, dwr, None


def _kernels_apply(q, norm_weight, w_router, use_kernels) -> bool:
    if use_kernels is False:
        return False
    if any(t is not None and t.dtype not in _KERNEL_DTYPES for t in (q, norm_weight, w_router)):
        return False
    return bool(use_kernels) or q.is_cuda


def norm_router(
    q: torch.Tensor,
    norm_weight: torch.Tensor | None,
    w_router: torch.Tensor,
    chunk: int = CHUNK,
    use_kernels: bool | None = None,
    eps: float = RMS_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q normalised per head in q's dtype, or q itself without norm_weight; R in fp32).

    q: (B, L, H, D); norm_weight: (H, D) or None; w_router: (H, D, E). Same values as
    reference.rms_norm_heads then reference.router; memory as the module docstring says.
    use_kernels: None runs the fused Triton kernels for CUDA tensors and the PyTorch
    autograd.Function (token chunks of `chunk`) otherwise; True runs the kernels also for
    CPU tensors (through Triton's interpreter); False always runs PyTorch. float64 always
    runs PyTorch. `chunk` only concerns the PyTorch path. eps: the RMSNorm's epsilon.
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if _kernels_apply(q, norm_weight, w_router, use_kernels):
        if plain_eager_call(q, norm_weight, w_router):  # no op dispatch: about 10 us less
            from .kernels.norm_router import norm_router_fwd

            return norm_router_fwd(q, norm_weight, w_router, eps=eps)
        if eager_autograd_call(q, norm_weight, w_router):  # no op dispatch either way
            out = _NormRouterKernels.apply(q, norm_weight, w_router, eps)
            return out if norm_weight is not None else (q, out[0])
        qn, r = _norm_router_op(q, norm_weight, w_router, eps)
        return (qn if norm_weight is not None else q), r
    if norm_weight is None:
        return q, _NormRouter.apply(q, None, w_router, chunk, eps)
    return _NormRouter.apply(q, norm_weight, w_router, chunk, eps)
