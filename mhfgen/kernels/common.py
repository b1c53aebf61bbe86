"""What the launchers share: the spec of a call and the config it runs with."""
from __future__ import annotations

import torch

from .. import device as _device
from ..dispatch import choose_config
from ..spec import KernelSpec, LaunchConfig, dtype_name
from ..validation import Problem


def spec_of(problem: Problem, q: torch.Tensor) -> KernelSpec:
    """The KernelSpec a call with these sizes and q's dtype and device needs."""
    return KernelSpec(problem.heads, problem.kv_heads, problem.head_dim, problem.experts,
                      problem.expert_dim, dtype_name(q.dtype), _device.target(q.device))


def resolve_config(kernel: str, spec: KernelSpec, problem: Problem, q: torch.Tensor,
                   config: LaunchConfig | None) -> LaunchConfig:
    """`config` if given (checked against the spec), else the dispatcher's choice."""
    if config is None:
        return choose_config(kernel, spec, problem.tokens, q.device)
    if not isinstance(config, LaunchConfig):
        raise TypeError(f"config must be a LaunchConfig, got {type(config).__name__}")
    config.check_for(spec)
    return config


_allocator_set = False


def ensure_descriptor_allocator(device: torch.device) -> None:
    """Tensor descriptors made inside a kernel need global scratch memory: give Triton a
    torch-backed allocator once per process (the interpreter needs none)."""
    global _allocator_set
    if _allocator_set or device.type != "cuda":
        return
    import triton

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda")

    triton.set_allocator(alloc)
    _allocator_set = True


_poison = False


def set_poison(enabled: bool) -> None:
    """Debugging aid for tests: fill every output buffer the launchers allocate with NaN
    before the kernel runs, so an element the kernel fails to write shows up as NaN."""
    global _poison
    _poison = enabled


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or a NaN-filled tensor while poisoning is on (see set_poison)."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """t itself if its last dim has unit stride, else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def intermediate_blocks(spec: KernelSpec, block_n: int) -> int:
    """Tiles of BLOCK_N columns over I: I / BLOCK_N when BLOCK_N divides De, else
    ceil(De / BLOCK_N) masked tiles per expert."""
    if spec.expert_dim % block_n == 0:
        return spec.intermediate // block_n
    return spec.experts * cdiv(spec.expert_dim, block_n)
