"""Launch plans: what a launcher computes once per call signature, and their caches.

NOTE: launchers cache their plan (validation, spec, config, compiled kernel, grid,
strides) under the signatures of their arguments, so a repeated call costs a dict lookup
and the launch: the host overhead bar is 10 us above a bare launch. The dispatcher's
choices are part of a plan, so every plan cache is emptied when the dispatcher forgets
its choices (mhfgen.dispatch.on_clear).
"""

from __future__ import annotations

import torch

from .. import dispatch
from ..registry import VariantConfig
from .configs import first_launch

#: every launcher's plan cache, so that clear_plans() can empty them all
_plan_caches: list[dict] = []
MAX_PLANS = 4096


def plan_cache() -> dict:
    """A launcher's cache of launch plans, keyed by the call's signature (see signature)."""
    cache: dict = {}
    _plan_caches.append(cache)
    return cache


def clear_plans() -> None:
    """Forget every cached launch plan (the dispatcher calls this when its choices change)."""
    for cache in _plan_caches:
        cache.clear()


def remember(cache: dict, key, plan):
    """Store `plan` under `key`, emptying a cache that grew past MAX_PLANS."""
    if len(cache) >= MAX_PLANS:
        cache.clear()
    cache[key] = plan
    return plan


def signature(t: torch.Tensor) -> tuple:
    """What a launch plan depends on for one tensor: shape, strides, dtype and device."""
    return t.shape, t.stride(), t.dtype, t.device


def plan_key(config, q, k, u, v, r, do=None) -> tuple:
    """The plan-cache key of a launcher call: the signatures of its tensors and the config.
    Arguments that are not tensors get the input checks' TypeError naming them, and a
    config that is not a kernel variant's config (a dict, say) a TypeError naming it."""
    if config is not None and not isinstance(config, VariantConfig):
        raise TypeError(f"config must be a kernel variant's config, got {type(config).__name__}")
    try:
        key = (signature(q), signature(k), signature(u), signature(v), signature(r))
        return key + ((config,) if do is None else (signature(do), config))
    except AttributeError:
        from ..validation import check_flash_mhf_inputs

        check_flash_mhf_inputs(q, k, u, v, r)
        raise TypeError(
            f"do must be a torch.Tensor (B, L, H, D), got {type(do).__name__}"
        ) from None


class CachedLaunch:
    """The path every variant's launcher takes: a plan per call signature, made once.

    `make_plan(*tensors, config)` checks the inputs, chooses and checks the config and
    compiles (all but the launch); `run(plan, *tensors)` allocates the outputs and
    launches. A call looks its plan up under plan_key (the tensors' signatures and the
    config) and runs it; the first call of a signature goes through
    mhfgen.kernels.configs.first_launch (a tuned config that fails there gives way to the
    heuristic) and keeps the plan. `tensors` are (q, k, u, v, r) or (q, k, u, v, r, do).
    """

    __slots__ = ("kernel", "make_plan", "run", "plans")

    def __init__(self, kernel: str, make_plan, run) -> None:
        self.kernel, self.make_plan, self.run = kernel, make_plan, run
        self.plans = plan_cache()

    def __call__(self, *tensors: torch.Tensor, config=None):
        key = plan_key(config, *tensors)
        plan = self.plans.get(key)
        if plan is not None:
            return self.run(plan, *tensors)
        plan, out = first_launch(
            self.kernel,
            lambda c: self.make_plan(*tensors, c),
            lambda p: self.run(p, *tensors),
            tensors[:5],
            config,
        )
        remember(self.plans, key, plan)
        return out


dispatch.on_clear(clear_plans)
