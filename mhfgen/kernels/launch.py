"""One kernel launch of a launch plan (DirectLaunch) and launching on a tensor's device."""

from __future__ import annotations

import contextlib

import torch
import triton
from triton import knobs

from ..env import flag

#: Triton releases whose launcher protocol DirectLaunch was written against and tested on
#: (CompiledKernel.run(gridX, gridY, gridZ, stream, function, packed_metadata,
#: launch_metadata, enter_hook, exit_hook, *every_parameter)); others take the JIT path
DIRECT_LAUNCH_TRITON = ("3.6.",)
#: MHFGEN_JIT_LAUNCH on (mhfgen.env.flag): launch every call through JITFunction.run (debugging)
JIT_LAUNCH_REQUESTED = flag("MHFGEN_JIT_LAUNCH")
#: whether launches reuse compiled binaries: a tested Triton, and no JIT launch requested
DIRECT_LAUNCH = triton.__version__.startswith(DIRECT_LAUNCH_TRITON) and not JIT_LAUNCH_REQUESTED


class DirectLaunch:
    """One kernel launch of a launch plan: kernel, grid, the arguments after the tensors
    and the launch options fixed; the tensors given per call, `launch(*tensors)`. A
    per-call argument may also be a host-side TMA descriptor (the Gluon kernels' q, k, u,
    v and output tiles): its base tensor stands for it in the checks below, and the
    binary's launcher encodes the descriptor from it on every call, as it does on the JIT
    path.

    `kernel[grid](*args, **meta)` (JITFunction.run) binds and specialises every argument
    and builds launch metadata on every call, 10 to 30 us of Python per launch on an H200
    host for these kernels' twenty-odd arguments. Here the first launch on a CUDA device
    goes through JITFunction.run and keeps the CompiledKernel it returns; later launches
    call that binary's own launcher (`CompiledKernel.run`, the C launcher Triton generated
    for it) with the same positional arguments JITFunction.run would pass, the way
    torch.compile's Inductor launches its Triton kernels.

    Why that is the same launch: whatever JITFunction.run derives from the arguments is
    fixed by the plan's key (the tensors' shapes, strides, dtypes and device fix the scalar
    arguments, their specialisation and the signature), except what is checked on every
    call, the JIT path taken where it differs: the 16-byte alignment of every data pointer
    (the binary is only reused when all are aligned, as they were when it was compiled)
    and Triton's launch hooks (a profiler that set one gets the JIT path and its metadata).
    The interpreter always takes the JIT path, and so does every launch where DIRECT_LAUNCH
    is off (a Triton release this was not tested on, or MHFGEN_JIT_LAUNCH=1).

    Every launch runs on the tensors' device: where the current CUDA device is another
    (a model spread over GPUs in one process), the launch is made under
    `torch.cuda.device(...)` of the tensors' device, as PyTorch's own operators do;
    `kernel[grid](...)` alone would launch on the current device with the other device's
    pointers.
    """

    __slots__ = ("kernel", "grid", "args", "meta", "tail", "compiled", "device")

    def __init__(self, kernel, grid: tuple, args: tuple, meta: dict) -> None:
        self.kernel, self.args, self.meta = kernel, args, meta
        self.grid = (tuple(grid) + (1, 1))[:3]
        self.tail = None  # the positional arguments after the tensors, constexprs included
        self.compiled = None  # the CompiledKernel of the first aligned CUDA launch
        self.device = -1  # the CUDA device of the tensors of that launch

    def __call__(self, *tensors) -> None:
        first = _tensor_of(tensors[0])
        other = foreign_device(first)
        if other is None:  # no context manager on the common path: it is the hot one
            self._launch(tensors, first.get_device())
        else:
            with torch.cuda.device(other):
                self._launch(tensors, other)

    def launch_all(self, args: tuple) -> None:
        """Launch given every positional argument of the kernel, the plan's fixed ones
        (those this launch was made with) last, as a launcher's `arguments` builds them."""
        self(*args[: len(args) - len(self.args)])

    def _launch(self, tensors: tuple, device: int) -> None:
        """Launch on the current device, which is the tensors' device (or the CPU: -1)."""
        compiled = self.compiled
        ptrs = 0
        if device >= 0:
            for t in tensors:
                ptrs |= _tensor_of(t).data_ptr()
        if compiled is not None and not ptrs & 15 and _no_launch_hooks():
            g0, g1, g2 = self.grid
            compiled.run(
                g0,
                g1,
                g2,
                torch._C._cuda_getCurrentRawStream(device),
                compiled.function,
                compiled.packed_metadata,
                None,
                None,
                None,
                *tensors,
                *self.tail,
            )
            return
        result = self.kernel[self.grid](*tensors, *self.args, **self.meta)
        if (
            compiled is None
            and device >= 0
            and not ptrs & 15
            and DIRECT_LAUNCH
            and hasattr(result, "packed_metadata")
        ):
            self.tail = self._tail(tensors)
            self.device = device
            self.compiled = result

    def _tail(self, tensors: tuple) -> tuple:
        """The kernel's parameters after the tensors, in signature order, as
        JITFunction.run passes them to the binary (constexprs and defaults included)."""
        names = set(self.kernel.arg_names)
        params = {k: v for k, v in self.meta.items() if k in names}
        bound = self.kernel.signature.bind(*tensors, *self.args, **params)
        bound.apply_defaults()
        return tuple(bound.arguments.values())[len(tensors) :]


def _tensor_of(arg) -> torch.Tensor:
    """The tensor behind a per-call argument: the argument itself, or the base tensor of a
    host-side TMA descriptor (a Gluon TensorDescriptor, whose `base` holds its address)."""
    return arg if type(arg) is torch.Tensor else getattr(arg, "base", arg)


def foreign_device(t: torch.Tensor) -> int | None:
    """`t`'s CUDA device where it is not the current one (a Triton launch, which goes to
    the current device, needs a guard there), else None (CPU tensors included)."""
    device = t.get_device()
    if device < 0 or device == torch.cuda.current_device():
        return None
    return device


def on_device_of(t: torch.Tensor):
    """A context in which a Triton launch runs on `t`'s device: `torch.cuda.device(...)`
    where the current CUDA device is another one (foreign_device), else nothing."""
    device = foreign_device(t)
    return contextlib.nullcontext() if device is None else torch.cuda.device(device)


def _no_launch_hooks() -> bool:
    """Whether no Triton launch hook is set (a profiler such as Proton sets them)."""
    runtime = knobs.runtime
    return not (
        getattr(runtime.launch_enter_hook, "calls", True)
        or getattr(runtime.launch_exit_hook, "calls", True)
    )
