"""The built-in config of every kernel variant: valid for any spec and shape the variant
supports, used where the tuning database has nothing better (and the baseline tuned
configs are compared with).

Each variant's module holds its heuristic (mhfgen.registry.Variant.default_config); the
Triton-language ones start from a sweep on an H200 (bf16, 1.3B shape, 16384 tokens;
docs/PERFORMANCE.md) and shrink (pipeline depth, then tile sizes) until the shared memory
estimate of mhfgen.resources fits the target (mhfgen.variants._triton.shrink_to_fit).
"""

from __future__ import annotations

from . import registry
from .spec import KernelSpec
from .variants._triton import pick_block_n, rows_block  # noqa: F401 - the shared helpers


def default_config(kernel: str, spec: KernelSpec, tokens: int, sm_count: int):
    """The heuristic config of variant `kernel` for `spec` at `tokens` tokens on a GPU of
    `sm_count` multiprocessors (any positive number for the interpreter)."""
    return registry.get(kernel).default_config(spec, tokens, sm_count)


def shrink_to_fit(kernel: str, spec: KernelSpec, config):
    """Lower num_stages, then the larger tile dimension, until `config` fits."""
    from .variants._triton import shrink_to_fit as shrink

    variant = registry.get(kernel)
    return shrink(variant, spec, variant.coerce(config))
