"""One kernel launch of a launch plan (DirectLaunch), its TMA operands (Tma) and launching
on a tensor's device."""

from __future__ import annotations

import contextlib
import inspect

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


#: encoded TMA descriptors a DirectLaunch keeps, per kernel parameter, before it forgets
#: them all (activations cycle through a few addresses under PyTorch's caching allocator)
ENCODED_PER_PARAMETER = 32


class Tma:
    """A Gluon kernel's per-call TMA operand: the 2-D tensor a host descriptor covers
    (`base`), the descriptor's block shape and its shared-memory layout
    (mhfgen.kernels.sm90.nvmma_block). The JIT path gets the Gluon TensorDescriptor
    (`descriptor()`); a DirectLaunch passes the binary the encoded descriptor, encoded once
    per address, shape and strides."""

    __slots__ = ("base", "block_shape", "layout")

    def __init__(self, base: torch.Tensor, block_shape: list, layout) -> None:
        self.base, self.block_shape, self.layout = base, block_shape, layout

    def descriptor(self):
        """The Gluon host TensorDescriptor (its checks of alignment and layout run here)."""
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        return TensorDescriptor.from_tensor(self.base, self.block_shape, self.layout)


def host_descriptors(args) -> tuple:
    """`args` with every Tma replaced by its TensorDescriptor (what JITFunction.run and the
    compile helpers take)."""
    return tuple(a.descriptor() if type(a) is Tma else a for a in args)


class DirectLaunch:
    """One kernel launch of a launch plan: kernel, grid, the arguments after the tensors
    and the launch options fixed; the tensors given per call, `launch(*tensors)`. A
    per-call argument may also be a TMA operand (Tma: the Gluon kernels' q, k, u, v and
    output tiles) or a host-side TMA descriptor: its base tensor stands for it in the
    checks below.

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

    TMA operands: building a Gluon TensorDescriptor (with its checks) and encoding it into
    the 128-byte CUtensorMap the kernel reads (cuTensorMapEncodeTiled, through Triton's
    make_tensordesc_arg) cost 10 to 15 us of host time per operand on an H100 host, and a
    backward passes ten. A binary whose launcher takes descriptors is called through its
    C launcher with the operands encoded here (EncodedLaunch): the encoding is a function
    of the address, shape and strides alone (the block, layout and element type are fixed
    by the binary), so it is kept per parameter under that key and reused while the
    allocator hands out the same addresses; the cache holds no tensor.

    Every launch runs on the tensors' device: where the current CUDA device is another
    (a model spread over GPUs in one process), the launch is made under
    `torch.cuda.device(...)` of the tensors' device, as PyTorch's own operators do;
    `kernel[grid](...)` alone would launch on the current device with the other device's
    pointers.
    """

    __slots__ = ("kernel", "grid", "args", "meta", "tail", "compiled", "device", "encoded")

    def __init__(self, kernel, grid: tuple, args: tuple, meta: dict) -> None:
        self.kernel, self.args, self.meta = kernel, args, meta
        self.grid = (tuple(grid) + (1, 1))[:3]
        self.tail = None  # the positional arguments after the tensors, constexprs included
        self.compiled = None  # the CompiledKernel of the first aligned CUDA launch
        self.device = -1  # the CUDA device of the tensors of that launch
        self.encoded = None  # its C launcher with TMA operands encoded here (EncodedLaunch)

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
            stream = torch._C._cuda_getCurrentRawStream(device)
            if self.encoded is not None:
                self.encoded(g0, g1, g2, stream, tensors, self.tail)
                return
            compiled.run(
                g0,
                g1,
                g2,
                stream,
                compiled.function,
                compiled.packed_metadata,
                None,
                None,
                None,
                *host_descriptors(tensors),
                *self.tail,
            )
            return
        result = self.kernel[self.grid](*host_descriptors(tensors), *self.args, **self.meta)
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
            self.encoded = EncodedLaunch.of(result, len(tensors))

    def _tail(self, tensors: tuple) -> tuple:
        """The kernel's parameters after the tensors, in signature order, as
        JITFunction.run passes them to the binary (constexprs and defaults included)."""
        names = set(self.kernel.arg_names)
        params = {k: v for k, v in self.meta.items() if k in names}
        bound = self.kernel.signature.bind(*tensors, *self.args, **params)
        bound.apply_defaults()
        return tuple(bound.arguments.values())[len(tensors) :]


class EncodedLaunch:
    """A compiled Gluon kernel's C launcher, called with its TMA operands encoded here.

    Triton 3.6 wraps the C launcher of a kernel that takes host descriptors in a Python
    function (triton.backends.nvidia.driver.wrap_handle_tensordesc) that turns each
    descriptor into its encoded CUtensorMap followed by its shape and strides, on every
    call. This calls the C launcher itself, with the expansion that wrapper would make,
    made by the same make_tensordesc_arg once per (parameter, address, shape, strides) of
    a Tma operand and kept (at most ENCODED_PER_PARAMETER per parameter); a
    TensorDescriptor a caller built is encoded on every call, as by the wrapper. `of` gives None wherever the
    binary's launcher is not that wrapper around a C launcher, or needs scratch memory
    allocated per launch: the launch then goes through the binary's `run`."""

    __slots__ = ("launcher", "head", "slots", "cache", "encode")

    def __init__(self, launcher, head: tuple, slots: dict, encode) -> None:
        self.launcher = launcher  # the C launcher: (grid, stream, function, ..., *expanded)
        self.head = head  # (function, cooperative, pdl, scratch x 2, packed metadata, None x 3)
        self.slots = slots  # per-call argument index -> its descriptor metadata
        self.cache: dict = {}
        self.encode = encode  # make_tensordesc_arg

    @classmethod
    def of(cls, compiled, n_tensors: int) -> EncodedLaunch | None:
        """The encoded launch of `compiled` (whose first `n_tensors` parameters are the
        per-call arguments), or None where its launcher is not Triton's descriptor wrapper
        around a C launcher, or allocates scratch memory per launch."""
        run = getattr(compiled, "run", None)
        wrapper = getattr(run, "launch", None)
        try:
            free = inspect.getclosurevars(wrapper).nonlocals
        except TypeError:  # not a Python function: a C launcher without descriptors
            return None
        launcher, indices = free.get("launcher"), free.get("tensordesc_indices")
        metas = free.get("tensordesc_meta")
        if (
            launcher is None
            or not indices
            or not metas
            or any(m is None for m in metas)
            or max(indices) >= n_tensors
            or getattr(run, "global_scratch_size", 1)
            or getattr(run, "profile_scratch_size", 1)
        ):
            return None
        from triton.backends.nvidia.driver import make_tensordesc_arg

        head = (
            compiled.function,
            run.launch_cooperative_grid,
            run.launch_pdl,
            None,
            None,
            compiled.packed_metadata,
            None,
            None,
            None,
        )
        slots = dict(zip(sorted(indices), metas))
        return cls(launcher, head, slots, make_tensordesc_arg)

    def __call__(self, g0: int, g1: int, g2: int, stream: int, tensors: tuple, tail: tuple):
        args = [g0, g1, g2, stream, *self.head]
        slots, cache = self.slots, self.cache
        for i, arg in enumerate(tensors):
            meta = slots.get(i)
            if meta is None:
                args.append(arg)
                continue
            if type(arg) is not Tma:  # a caller's own TensorDescriptor: encoded per call
                args.extend(self.encode(arg, meta))
                continue
            base = arg.base
            key = (i, base.data_ptr(), *base.shape, *base.stride())
            encoded = cache.get(key)
            if encoded is None:
                if len(cache) >= ENCODED_PER_PARAMETER * len(slots):
                    cache.clear()
                encoded = cache[key] = self.encode(arg.descriptor(), meta)
            args.extend(encoded)
        self.launcher(*args, *tail)


def _tensor_of(arg) -> torch.Tensor:
    """The tensor behind a per-call argument: the argument itself, or the base tensor of a
    TMA operand (Tma) or a host-side TMA descriptor (a Gluon TensorDescriptor), whose
    `base` holds its address."""
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
