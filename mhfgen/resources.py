"""Static resource estimates of a kernel config, to reject impossible configs before
compiling (heuristics and tuner alike).

Each variant's module holds its fitted formulas (mhfgen.registry.Variant.shared_memory
and .registers, documented there); this module adds the target's limits.
"""

from __future__ import annotations

from functools import cache

import torch

from . import registry
from .spec import INTERPRETER, KernelSpec

#: sm90's opt-in limit per block, the default where the device cannot be asked
DEFAULT_SMEM_LIMIT = 232448


def shared_memory_estimate(kernel: str, spec: KernelSpec, config) -> int:
    """Bytes of shared memory variant `kernel` needs with `config`."""
    variant = registry.get(kernel)
    return variant.shared_memory(spec, variant.coerce(config))


def register_estimate(kernel: str, spec: KernelSpec, config) -> float:
    """fp32 values a thread of variant `kernel` keeps live with `config`."""
    variant = registry.get(kernel)
    return variant.registers(spec, variant.coerce(config))


@cache
def shared_memory_limit(target: str) -> int:
    """The per-block shared memory limit of `target` (unbounded for the interpreter)."""
    if target == INTERPRETER:
        return 1 << 62
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        if f"sm{props.major}{props.minor}" == target:
            return int(getattr(props, "shared_memory_per_block_optin", DEFAULT_SMEM_LIMIT))
    return DEFAULT_SMEM_LIMIT


def fits(kernel: str, spec: KernelSpec, config) -> bool:
    """Whether `config`'s shared memory estimate fits the target."""
    return shared_memory_estimate(kernel, spec, config) <= shared_memory_limit(spec.target)
