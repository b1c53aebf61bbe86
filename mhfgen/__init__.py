"""mhfgen: generated, autotuned Triton kernels for the Flash Multi-Head FFN (FlashMHF).

Public API (docs/CONTRACTS.md, section 2): flash_mhf (the core op, autograd-aware), FlashMHF (the
layer), SwiGLU (the baseline FFN), reference (the plain-PyTorch definition).
"""
from .device import enable_interpreter_default as _enable_interpreter_default

_enable_interpreter_default()

from . import reference  # noqa: E402
from .layers import FlashMHF, SwiGLU  # noqa: E402
from .ops import flash_mhf  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["flash_mhf", "FlashMHF", "SwiGLU", "reference", "__version__"]
