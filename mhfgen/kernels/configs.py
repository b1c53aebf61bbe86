"""Which spec a call has and which config it runs with (given, or the dispatcher's)."""

from __future__ import annotations

import torch

from .. import device as _device
from .. import registry
from ..dispatch import choose_config, reject_tuned
from ..spec import INTERPRETER, KernelSpec, dtype_name
from ..validation import Problem, check_flash_mhf_inputs
from .buffers import grad_plan_inputs

#: what a bfloat16 call on CPU tensors gets instead of a wrong answer
BF16_INTERPRETER_ERROR = (
    "mhfgen kernels cannot run bfloat16 on CPU tensors: Triton's interpreter does not "
    "multiply bfloat16 correctly (its results are wrong, not merely imprecise). Use "
    "float32 or float16 on the CPU, backend='torch' (the PyTorch reference, any dtype), "
    "or a CUDA device"
)


def spec_of(problem: Problem, q: torch.Tensor, k: torch.Tensor | None = None) -> KernelSpec:
    """The KernelSpec a call with these sizes, q's dtype and device and k's dtype (FP8
    weights: an FP8-weight dtype name) needs; TypeError for bfloat16 on the CPU
    (BF16_INTERPRETER_ERROR)."""
    target = _device.target(q.device)
    if q.dtype == torch.bfloat16 and target == INTERPRETER:
        raise TypeError(BF16_INTERPRETER_ERROR)
    return KernelSpec(
        problem.heads,
        problem.kv_heads,
        problem.head_dim,
        problem.experts,
        problem.expert_dim,
        dtype_name(q.dtype, None if k is None else k.dtype),
        target,
    )


def resolve_config(kernel: str, spec: KernelSpec, problem: Problem, q: torch.Tensor, config):
    """The config variant `kernel` launches with: `config` if given (the variant's own
    config type, checked against the spec), else the dispatcher's choice among this
    variant's tuned configs and its heuristic."""
    variant = registry.get(kernel)
    if config is None:
        return choose_config(kernel, spec, problem.tokens, q.device)
    try:
        return variant.check(spec, config)
    except TypeError:
        raise TypeError(
            f"config must be a {variant.stem} config "
            f"({variant.Config.__module__}.{variant.Config.__qualname__}), "
            f"got {type(config).__name__}"
        ) from None


def checked_call(q, k, u, v, r, do, config, choose) -> tuple:
    """(tokens, spec, config, copy_do, do_strides) of a launcher call, the first steps of
    every launcher's plan: the inputs checked (check_flash_mhf_inputs), whether dO needs a
    contiguous copy and the (batch, seq, head) strides the kernel sees of it
    (buffers.grad_plan_inputs; False and () where `do` is None, the forward), the spec
    (spec_of), and the config `choose(spec, problem, q, config)` returns (resolve_config,
    or a Gluon launcher's checked_config, given the variant's stem)."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    copy_do, do_strides = (False, ()) if do is None else grad_plan_inputs(q, do)
    spec = spec_of(problem, q, k)
    return problem.tokens, spec, choose(spec, problem, q, config), copy_do, do_strides


def first_launch(kernel: str, make_plan, run, inputs: tuple, config):
    """(plan, outputs) of a call signature's first call: `make_plan(config)` (check,
    choose, compile) and `run(plan)` (allocate, launch).

    A tuned config that fails there (a compile error, too many resources for this GPU, a
    launch error) is not the caller's fault: where the dispatcher chose it (`config` is
    None) and it came from a tuning database, mhfgen.dispatch.reject_tuned logs it once
    and puts the built-in heuristic in its place, and the call is made again with that.
    Errors of the inputs, of a config the caller passed and of the heuristic propagate,
    and so do the errors the call itself causes wherever they arise (caller_error: out of
    memory, a CUDA context that an earlier fault left unusable): they say nothing about
    the variant, so it stays chosen.
    """
    try:
        plan = make_plan(config)
        return plan, run(plan)
    except Exception as exc:
        if config is not None or caller_error(exc) or not _tuned_config_failed(kernel, inputs, exc):
            raise
    plan = make_plan(None)
    return plan, run(plan)


#: CUDA errors that leave the context unusable: no other variant could run the call after
#: them, so they are the caller's to see, never a reason to demote a variant
STICKY_CUDA_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "illegal instruction",
    "misaligned address",
    "hardware stack error",
)


def caller_error(error: BaseException) -> bool:
    """Whether `error`, raised at a call's first launch, belongs to the call rather than
    to the variant or config that ran it: out of memory (torch's OutOfMemoryError, a
    MemoryError, or a CUDA driver's 'out of memory'; not Triton's 'out of resource', which
    is the config's), or a sticky CUDA error. Compile errors and the other launch errors
    are the variant's (mhfgen.dispatch.reject_tuned demotes it)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or any(s in text for s in STICKY_CUDA_ERRORS)


def _tuned_config_failed(kernel: str, inputs: tuple, error: Exception) -> bool:
    """Whether `error` came from a tuned config (reported to the dispatcher, which
    replaces it) rather than from the inputs or the heuristic."""
    q = inputs[0]
    try:
        problem = check_flash_mhf_inputs(*inputs)
        spec = spec_of(problem, q, inputs[1])
    except (TypeError, ValueError):
        return False  # the inputs' own error, raised as it is
    return reject_tuned(kernel, spec, problem.tokens, q.device, error)
