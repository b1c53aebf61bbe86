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
from torch.autograd.function import once_differentiable

from .device import target
from .dispatch import on_clear
from .kernels import backward, forward
from .spec import fp8_target
from .validation import (
    FP8_ACTIVATIONS,
    check_flash_mhf_inputs_cached,
    check_weight_scales,
    int32_safe,
)


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


@torch.library.custom_op("mhfgen::flash_mhf_fp8", mutates_args=())
def _flash_mhf_fp8_op(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, scales: Tensor
) -> Tensor:
    return forward(q, k, u, v, r, scales)


@_flash_mhf_fp8_op.register_fake
def _(q, k, u, v, r, scales):
    return q.new_empty(q.shape)


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
    if not _untraced():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or (grad and t.requires_grad)):
            return False
    return True


def eager_autograd_call(*tensors: Tensor | None) -> bool:
    """Whether a call that wants gradients may run through a torch.autograd.Function
    instead of its custom op: nothing traces or transforms it (as in plain_eager_call) and
    every argument is a plain torch.Tensor, an nn.Parameter or None.

    The custom op's registered autograd costs on the order of 100 us of Python a call
    between its forward and its backward (its boxed dispatch, argument schema handling and
    the generated backward node), several times the launches it wraps; a small model's
    training step is bound by that host time. The Function runs the same launchers in
    both directions, so values and gradients are the op's; under torch.compile,
    torch.export, jit tracing, dispatch modes and functorch transforms the op still runs,
    which is what those need (a graph node with a fake implementation)."""
    return _untraced() and all(t is None or type(t) in _PLAIN_TYPES for t in tensors)


def _untraced() -> bool:
    """Whether nothing traces or transforms the call: not torch.compile, torch.export or
    torch.jit.trace, no TorchDispatchMode, no functorch transform (and the PyTorch
    internals that tell are there)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if _dispatch_modes is None or _functorch_active is None:
        return False
    return not (_dispatch_modes() or _functorch_active())


#: the argument types eager_autograd_call accepts
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


class _FlashMhfFunction(torch.autograd.Function):
    """flash_mhf's eager autograd (eager_autograd_call): the launchers of the op
    `mhfgen::flash_mhf` forward and of `mhfgen::flash_mhf_backward` backward."""

    @staticmethod
    def forward(ctx, q, k, u, v, r):
        ctx.save_for_backward(q, k, u, v, r)
        return forward(q, k, u, v, r)

    @staticmethod
    @once_differentiable  # as the op: its backward has no derivative of its own
    def backward(ctx, do):
        q, k, u, v, r = ctx.saved_tensors
        dq, dr, dk, du, dv = backward(q, k, u, v, r, do)
        return dq, dk, du, dv, dr


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
    Eager calls that need no gradient skip the custom op's dispatch (see plain_eager_call);
    eager calls that need one run the same launchers through a torch.autograd.Function
    (see eager_autograd_call); traced, compiled and transformed calls run the custom op.
    """
    # a view whose head offsets pass 2^31 elements runs on a contiguous copy (the kernels'
    # head offsets are 32-bit; validation.head_offset_problem); autograd sees the copy
    q, r = int32_safe(q), int32_safe(r)
    if plain_eager_call(q, k, u, v, r):
        return forward(q, k, u, v, r)  # checks the inputs as the op would
    check_flash_mhf_inputs_cached(q, k, u, v, r)
    if eager_autograd_call(q, k, u, v, r):
        return _FlashMhfFunction.apply(q, k, u, v, r)
    return _flash_mhf_op(q, k, u, v, r)


def flash_mhf_fp8(q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, scales: Tensor) -> Tensor:
    """FlashMHF core with FP8 expert weights, for serving (no gradients).

    k, u, v: (Hkv, E, De, D) in float8_e4m3fn; scales: (3, Hkv, E, De) float32, the per-row
    scales of K, U and V (mhfgen.fp8.quantize_experts makes all four); the weights are
    w = w8 * scale. q: (B, L, H, D) in bfloat16 or float16, r: (B, L, H, E) in float32 or
    q's dtype, as flash_mhf takes them. Returns o (B, L, H, D) in q's dtype: FlashMHF on
    the dequantised weights, read at 1 byte per element and converted in registers (the
    MMAs run in q's dtype). Runs on GPUs with FP8 tensor cores (sm89 and later; an older
    GPU gets a one-line RuntimeError: dequantise with mhfgen.fp8.dequantize_experts and call
    flash_mhf there) and, for float16, in Triton's interpreter on CPU tensors. A q or r
    that requires grad while grad is enabled is a ValueError: FP8 weights serve, they do
    not train (FlashMHF layers after quantize_fp8_ dequantise for autograd instead).
    """
    check_weight_scales(k, scales)
    q, r = int32_safe(q), int32_safe(r)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, r)):
        raise ValueError(
            "flash_mhf_fp8 computes no gradients (FP8 weights are for serving): run it under "
            "torch.no_grad(), or call flash_mhf on dequantised weights to train"
        )
    check_fp8_device(q.device)
    if plain_eager_call(q, k, u, v, r, scales):
        return forward(q, k, u, v, r, scales)  # checks the inputs as the op would
    check_flash_mhf_inputs_cached(q, k, u, v, r)
    return _flash_mhf_fp8_op(q, k, u, v, r, scales)


def check_fp8_device(device: torch.device) -> None:
    """A one-line RuntimeError on a CUDA device without FP8 tensor cores (before sm89)."""
    if device.type == "cuda" and not fp8_target(arch := target(device)):
        raise RuntimeError(
            f"FP8 weights need FP8 tensor cores (sm89 or later); this GPU is {arch}: "
            "dequantise them (mhfgen.fp8.dequantize_experts) and call flash_mhf"
        )


def fp8_kernels_run(q: Tensor, r: Tensor) -> bool:
    """Whether flash_mhf_fp8 takes a call with these activations: bf16/fp16 q (fp16 only
    on the CPU, where the interpreter runs), no gradient wanted through q or r, and a
    device with FP8 tensor cores (or the CPU's interpreter)."""
    if q.dtype not in FP8_ACTIVATIONS or (q.device.type == "cpu" and q.dtype == torch.bfloat16):
        return False
    if torch.is_grad_enabled() and (q.requires_grad or r.requires_grad):
        return False
    return q.device.type == "cpu" or (q.device.type == "cuda" and fp8_target(target(q.device)))


_fp8_pays: dict = {}


def fp8_forward_pays(q: Tensor, k: Tensor, r: Tensor) -> bool:
    """Whether a FlashMHF layer with FP8 weights should run flash_mhf_fp8 on this call
    rather than dequantise and run the 16-bit forward: fp8_kernels_run, and the 16-bit
    forward the dispatcher would pick is a variant that takes FP8 weights too (the
    Triton-language one: decode sizes; GPUs or shapes without the Gluon forward), so reading
    half the bytes can only help. Where it picks the warp-specialised Gluon forward (prefill
    sizes on Hopper) the dequantised weights win: on an H100 the weight-only FP8 forward ran
    at 0.30x of it and the FP8-arithmetic one (flash_mhf_fwd_fp8_ws) at 0.98x on the 1.3B
    preset (docs/PERFORMANCE.md), and dequantising reads each FP8 weight once. At decode
    sizes flash_mhf_fp8 itself runs flash_mhf_fwd_fp8_ws where it applies (its split
    schedule). Remembered per call signature."""
    if not fp8_kernels_run(q, r):
        return False
    key = (q.shape, q.stride(), q.dtype, q.device, k.shape, r.shape, r.dtype)
    pays = _fp8_pays.get(key)
    if pays is None:
        from .dispatch import explain_choice
        from .kernels.configs import spec_of
        from .registry import usable
        from .validation import check_flash_mhf_inputs

        problem = check_flash_mhf_inputs(q, k, k, k, r)
        choice = explain_choice("fwd", spec_of(problem, q), problem.tokens, q.device)
        fp8_variants = usable("fwd", spec_of(problem, q, k), problem.tokens)
        pays = choice.variant in {v.stem for v in fp8_variants}
        if len(_fp8_pays) > 4096:
            _fp8_pays.clear()
        _fp8_pays[key] = pays
    return pays


on_clear(_fp8_pays.clear)  # the dispatcher's choices changed: ask it again
