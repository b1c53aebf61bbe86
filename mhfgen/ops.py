"""`mhfgen.flash_mhf`: the FlashMHF core as a torch.library custom op with autograd.

Layers: generated kernel -> launcher (mhfgen.kernels: check, allocate, launch; the
dispatcher picks each op's variant and config) ->
custom ops `mhfgen::flash_mhf` and `mhfgen::flash_mhf_backward` (fake implementations
for tracing, registered autograd) -> `flash_mhf` (this public function) -> FlashMHF.
torch.compile(fullgraph=True) traces through the ops as opaque calls.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import backward, forward
from .validation import check_flash_mhf_inputs_cached, int32_safe


@torch.library.custom_op("mhfgen::flash_mhf", mutates_args=())
def _flash_mhf_op(q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    return forward(q, k, u, v, r)


@_flash_mhf_op.register_fake
def _(q, k, u, v, r):
    return q.new_empty(q.shape)


@torch.library.custom_op("mhfgen::flash_mhf_backward", mutates_args=())
def _flash_mhf_backward_op(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, dr, dk, du, dv = backward(q, k, u, v, r, do)
    return dq, dk, du, dv, dr


@_flash_mhf_backward_op.register_fake
def _(q, k, u, v, r, do):
    return tuple(t.new_empty(t.shape) for t in (q, k, u, v, r))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, do):
    q, k, u, v, r = ctx.saved_tensors
    return _flash_mhf_backward_op(q, k, u, v, r, do)


_flash_mhf_op.register_autograd(_backward, setup_context=_setup_context)


#: PyTorch internals plain_eager_call reads; without them every call goes through the op
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def plain_eager_call(*tensors: Tensor | None) -> bool:
    """Whether a call may run its launcher directly instead of through its custom op.

    A custom op's dispatch costs about 10 us of Python per call (autograd and the op's
    boxed redispatch), as much as the launch itself; a call needs none of it when nothing
    traces or transforms it and no gradient is wanted: not under torch.compile, torch.export,
    torch.jit.trace, a TorchDispatchMode (FakeTensorMode, FlopCounterMode) or a functorch
    transform, every argument a plain torch.Tensor (or None), and none requiring grad while
    grad is enabled. The result is the same tensor the op would return (the op's forward
    is the same launcher). About 1 us.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if _dispatch_modes is None or _functorch_active is None:
        return False
    if _dispatch_modes() or _functorch_active():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or (grad and t.requires_grad)):
            return False
    return True


def flash_mhf(q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """FlashMHF core through the generated Triton kernels, differentiable.

    O[b,l,h] = sum_e r[b,l,h,e] * (silu(q[b,l,h] K[g,e]^T) * (q[b,l,h] U[g,e]^T)) V[g,e],
    g = h // (H / Hkv). q: (B, L, H, D), any strides with stride(-1) == 1 (a view of
    x @ W_in^T; one whose head offsets pass 2^31 elements runs on a contiguous copy);
    k, u, v: (Hkv, E, De, D); r: (B, L, H, E) in fp32 or q's dtype. At most 2^31 - 1
    rows of tokens x heads per call (mhfgen.validation.INT32_LIMIT).
    Returns o (B, L, H, D) in q's dtype. CUDA tensors run compiled kernels, CPU tensors
    Triton's interpreter (float32 and float16 only: bfloat16 there is a TypeError, as the
    interpreter computes it wrongly). Bad input raises ValueError/TypeError before any
    kernel runs.
    Eager calls that need no gradient skip the custom op's dispatch (see plain_eager_call).
    """
    # a view whose head offsets pass 2^31 elements runs on a contiguous copy (the kernels'
    # head offsets are 32-bit; validation.head_offset_problem); autograd sees the copy
    q, r = int32_safe(q), int32_safe(r)
    if plain_eager_call(q, k, u, v, r):
        return forward(q, k, u, v, r)  # checks the inputs as the op would
    check_flash_mhf_inputs_cached(q, k, u, v, r)
    return _flash_mhf_op(q, k, u, v, r)
