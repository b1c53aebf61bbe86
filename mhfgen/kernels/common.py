"""Backwards-compatible names: what was one grab-bag module is split by responsibility.

    mhfgen.kernels.plans     launch-plan caches (cleared with the dispatcher's choices)
    mhfgen.kernels.launch    DirectLaunch, launching on a tensor's device
    mhfgen.kernels.buffers   output buffers, workspaces, strides, split counters
    mhfgen.kernels.configs   the spec of a call and the config it runs with
    mhfgen.tiling            cdiv, intermediate_blocks (tile geometry)

New code imports from those modules; this one only re-exports them.
"""
from ..tiling import cdiv, intermediate_blocks  # noqa: F401
from .buffers import (  # noqa: F401
                      contiguous_strides,
                      empty,
                      ensure_descriptor_allocator,
                      grad_plan_inputs,
                      set_poison,
                      split_counters,
)
from .configs import BF16_INTERPRETER_ERROR, first_launch, resolve_config, spec_of  # noqa: F401
from .launch import (  # noqa: F401
                      DIRECT_LAUNCH,
                      DIRECT_LAUNCH_TRITON,
                      JIT_LAUNCH_REQUESTED,
                      DirectLaunch,
                      foreign_device,
                      on_device_of,
)
from .plans import MAX_PLANS, clear_plans, plan_cache, plan_key, remember, signature  # noqa: F401
