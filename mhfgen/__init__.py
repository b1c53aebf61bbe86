"""mhfgen: generated, autotuned Triton kernels for the Flash Multi-Head FFN (FlashMHF).

Public API (docs/CONTRACTS.md, section 2): flash_mhf (the core op, autograd-aware), FlashMHF (the
layer), SwiGLU (the baseline FFN), reference (the plain-PyTorch definition); for serving with
FP8 expert weights (mhfgen.fp8): flash_mhf_fp8 (the core op on FP8 weights, no gradients),
quantize_fp8, quantize_experts and quantize_fp8_model.

Importing the package is cheap: the names above are loaded on first use (PEP 562), so that
`mhfgen --help` and the other command-line parsers run without importing torch or Triton.
Where torch is already imported, `import mhfgen` loads the op at once, so that
`torch.ops.mhfgen.*` is registered as soon as the package is imported.
"""

import importlib as _importlib
import sys as _sys

from .version import __version__

__all__ = [
    "flash_mhf",
    "flash_mhf_fp8",
    "FlashMHF",
    "SwiGLU",
    "reference",
    "quantize_fp8",
    "quantize_experts",
    "quantize_fp8_model",
    "__version__",
]

#: public name -> the module that defines it (None: the name is that module)
_LAZY = {
    "flash_mhf": ".ops",
    "flash_mhf_fp8": ".ops",
    "FlashMHF": ".layers",
    "SwiGLU": ".layers",
    "reference": None,
    "quantize_fp8": ".fp8",
    "quantize_experts": ".fp8",
    "quantize_fp8_model": ".layers",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _importlib.import_module(_LAZY[name] or f".{name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _BeforeTriton:
    """A meta-path finder that runs mhfgen.device.enable_interpreter_default just before
    Triton is first imported (Triton reads TRITON_INTERPRET at import), then removes
    itself. It finds nothing: the import itself proceeds as usual."""

    def find_spec(self, name, path=None, target=None):
        if name == "triton":
            self.remove()
            from .device import enable_interpreter_default

            enable_interpreter_default()
        return None

    def remove(self) -> None:
        if self in _sys.meta_path:
            _sys.meta_path.remove(self)


def _interpreter_default() -> None:
    """Switch Triton's interpreter on where there is no CUDA device (see
    mhfgen.device.enable_interpreter_default): now where torch is already imported (the
    check is cheap then), else just before Triton's first import."""
    import os

    if "TRITON_INTERPRET" in os.environ or "triton" in _sys.modules:
        return
    if "torch" in _sys.modules:
        from .device import enable_interpreter_default

        enable_interpreter_default()
    elif not any(isinstance(finder, _BeforeTriton) for finder in _sys.meta_path):
        _sys.meta_path.insert(0, _BeforeTriton())


_interpreter_default()
if "torch" in _sys.modules:  # registers torch.ops.mhfgen.* (the caller has paid for torch)
    from . import ops as _ops  # noqa: F401
