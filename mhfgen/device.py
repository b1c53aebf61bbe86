"""Facts about the device a call runs on, cached per device: target, SM count, GPU name."""

from __future__ import annotations

import os
import sys
from functools import cache

import torch

from .spec import INTERPRETER


@cache
def _cuda_facts(index: int) -> tuple[str, int, str, str]:
    props = torch.cuda.get_device_properties(index)
    return (
        f"sm{props.major}{props.minor}",
        props.multi_processor_count,
        props.name,
        f"{props.major}.{props.minor}",
    )


def _facts(device: torch.device) -> tuple[str, int, str, str]:
    """_cuda_facts of a CUDA device: (target, SM count, name, compute capability)."""
    return _cuda_facts(device.index if device.index is not None else torch.cuda.current_device())


def target(device: torch.device) -> str:
    """'sm90'-style target of a CUDA device; 'interpreter' for the CPU."""
    if device.type == "cuda":
        return _facts(device)[0]
    if device.type == "cpu":
        return INTERPRETER
    raise ValueError(
        f"mhfgen kernels run on CUDA or (through Triton's interpreter) CPU tensors, "
        f"got a tensor on {device}"
    )


def target_for(compute_capability: str) -> str:
    """The target of a stored compute capability: '9.0' -> 'sm90', 'none' -> 'interpreter'."""
    major, dot, minor = compute_capability.partition(".")
    if dot and major.isdigit() and minor.isdigit():
        return f"sm{major}{minor}"
    return INTERPRETER


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 for the interpreter."""
    return _facts(device)[1] if device.type == "cuda" else 1


def gpu_name(device: torch.device) -> str:
    """The GPU's name as the driver reports it ('NVIDIA H200'); 'interpreter' for the CPU."""
    return _facts(device)[2] if device.type == "cuda" else INTERPRETER


def compute_capability(device: torch.device) -> str:
    """'9.0' style compute capability; 'none' for the CPU."""
    return _facts(device)[3] if device.type == "cuda" else "none"


def require_interpreter() -> None:
    """RuntimeError saying what to do when a kernel is to run on CPU tensors but Triton's
    interpreter is off (Triton's own error there names no driver, not the cause)."""
    from triton import knobs

    if not knobs.runtime.interpret:
        raise RuntimeError(
            "mhfgen: kernels on CPU tensors run through Triton's interpreter, which must be on "
            "before triton is imported: set TRITON_INTERPRET=1 in the environment (mhfgen sets "
            "it itself when imported first on a machine without CUDA), or use backend='torch'"
        )


def enable_interpreter_default() -> None:
    """Switch Triton's interpreter on where it is the only way to run kernels.

    NOTE: Triton decides at import whether its functions are compiled or interpreted, and
    the two cannot be mixed in one process. On a machine without CUDA, before triton is
    imported and when the user has not chosen, mhfgen sets TRITON_INTERPRET=1 so that
    backend="triton" runs on CPU tensors.
    """
    if "TRITON_INTERPRET" in os.environ or "triton" in sys.modules:
        return
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
