"""kernels.launch.DirectLaunch: the launch path that skips JITFunction.run after the first
launch. CI has no GPU, so the CUDA side is stood in for: a kernel object whose JIT launch
returns a recording CompiledKernel, tensors with chosen data pointers, and the current
device and stream. The H200 runs (mhfgen verify, benchmarks/dispatch_overhead.py) prove the
real binaries; these tests prove the decisions: when the binary is reused, with which
positional arguments, and when the JIT path is taken instead."""

from __future__ import annotations

import inspect

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on where there is no GPU

# isort: split
import pytest
import torch
from triton import knobs

from mhfgen.kernels.launch import DirectLaunch


def _kernel_fn(A, B, OUT, stride_a, rows, BLOCK_M, BLOCK_N, EXTRA=7):  # noqa: N803
    """The signature of a generated kernel: tensors, scalars, constexprs, a default."""


class FakeCompiled:
    """What JITFunction.run returns: a binary with its launcher."""

    function, packed_metadata = "cu-function", "packed"

    def __init__(self) -> None:
        self.runs = []

    def run(self, *args):
        self.runs.append(args)


class FakeJit:
    """A @triton.jit kernel: `kernel[grid](*args, **kw)` records the JIT launch and returns
    the compiled binary; arg_names and signature as JITFunction has them."""

    arg_names = list(inspect.signature(_kernel_fn).parameters)
    signature = inspect.signature(_kernel_fn)

    def __init__(self, current_device=lambda: None) -> None:
        self.compiled, self.jit_calls, self.jit_devices = FakeCompiled(), [], []
        self.current_device = current_device

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.jit_calls.append((grid, args, kwargs))
            self.jit_devices.append(self.current_device())
            return self.compiled

        return launch


class FakeCuda:
    """A CUDA tensor as the launch path sees it: a data pointer and a device index."""

    is_cuda = True

    def __init__(self, ptr: int, device: int = 0) -> None:
        self.ptr, self.device = ptr, device

    def data_ptr(self) -> int:
        return self.ptr

    def get_device(self) -> int:
        return self.device


@pytest.fixture
def cuda(monkeypatch):
    """Current device 0, device d's current raw stream 1234 + d, and torch.cuda.device(d)
    as a context manager that switches the current device and logs d (no CUDA needed)."""
    state = {"device": 0, "guards": []}

    class Guard:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            state["guards"].append(self.index)
            self.prev, state["device"] = state["device"], self.index

        def __exit__(self, *exc):
            state["device"] = self.prev

    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["device"])
    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(
        torch._C, "_cuda_getCurrentRawStream", lambda idx: 1234 + idx, raising=False
    )
    return state


META = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3)


def _launch(current_device=lambda: None):
    kernel = FakeJit(current_device)
    return kernel, DirectLaunch(kernel, (5, 2), (96, 37), META)


def test_first_launch_jit_then_the_binary_with_jits_positional_arguments(cuda):
    kernel, launch = _launch()
    a, b, out = FakeCuda(4096), FakeCuda(8192), FakeCuda(1 << 20)
    launch(a, b, out)
    assert kernel.jit_calls == [((5, 2, 1), (a, b, out, 96, 37), META)]
    assert kernel.compiled.runs == []
    launch(a, b, out)
    launch(a, b, out)
    assert len(kernel.jit_calls) == 1
    # grid padded to 3-D, current stream, function and metadata, no launch metadata or
    # hooks, then every parameter in signature order: constexprs and defaults included
    expected = (
        5,
        2,
        1,
        1234,
        "cu-function",
        "packed",
        None,
        None,
        None,
        a,
        b,
        out,
        96,
        37,
        64,
        32,
        7,
    )
    assert kernel.compiled.runs == [expected, expected]


class FakeDescriptor:
    """A host-side TMA descriptor (Gluon's TensorDescriptor) as the launch path sees it:
    its base tensor."""

    def __init__(self, base) -> None:
        self.base = base


def test_descriptors_reach_the_binary_as_they_are(cuda):
    """Gluon kernels take TMA descriptors: their base tensors stand for them in the device
    and alignment checks, and the binary gets the descriptor objects, which its launcher
    encodes per call (as on the JIT path)."""
    kernel, launch = _launch()
    da, db = FakeDescriptor(FakeCuda(4096)), FakeDescriptor(FakeCuda(8192))
    out = FakeCuda(1 << 20)
    launch(da, db, out)
    launch(da, db, out)
    assert kernel.jit_calls == [((5, 2, 1), (da, db, out, 96, 37), META)]
    (run,) = kernel.compiled.runs
    assert run[9:12] == (da, db, out)
    launch(FakeDescriptor(FakeCuda(4096 + 2)), db, out)  # a misaligned base
    assert len(kernel.jit_calls) == 2 and len(kernel.compiled.runs) == 1
    launch(FakeDescriptor(FakeCuda(4096, device=1)), db, out)  # on another device
    assert cuda["guards"] == [1]


def test_misaligned_pointer_takes_the_jit_path(cuda):
    kernel, launch = _launch()
    aligned = (FakeCuda(4096), FakeCuda(8192), FakeCuda(16384))
    launch(*aligned)
    launch(FakeCuda(4096 + 2), FakeCuda(8192), FakeCuda(16384))  # a bf16 view one in
    assert len(kernel.jit_calls) == 2 and kernel.compiled.runs == []
    launch(*aligned)
    assert len(kernel.compiled.runs) == 1


def test_binary_not_kept_from_a_misaligned_first_launch(cuda):
    kernel, launch = _launch()
    launch(FakeCuda(4100), FakeCuda(8192), FakeCuda(16384))
    assert launch.compiled is None  # that binary assumes nothing of alignment: not reused
    launch(FakeCuda(4096), FakeCuda(8192), FakeCuda(16384))
    assert launch.compiled is kernel.compiled
    launch(FakeCuda(4096), FakeCuda(8192), FakeCuda(16384))
    assert len(kernel.jit_calls) == 2 and len(kernel.compiled.runs) == 1


def test_tensors_on_another_device_than_the_current_launch_under_its_guard(cuda):
    kernel, launch = _launch(lambda: cuda["device"])
    tensors = (FakeCuda(4096, 1), FakeCuda(8192, 1), FakeCuda(16384, 1))
    launch(*tensors)  # current device 0, tensors on 1: JIT launch under device 1's guard
    assert kernel.jit_devices == [1] and cuda["guards"] == [1] and cuda["device"] == 0
    assert launch.compiled is kernel.compiled and launch.device == 1
    launch(*tensors)  # the binary, on device 1's stream, under the guard again
    assert cuda["guards"] == [1, 1] and kernel.compiled.runs[0][3] == 1235
    cuda["device"] = 1
    launch(*tensors)  # already current: no guard
    assert cuda["guards"] == [1, 1] and len(kernel.compiled.runs) == 2


def test_launch_hook_takes_the_jit_path(cuda):
    kernel, launch = _launch()
    tensors = (FakeCuda(4096), FakeCuda(8192), FakeCuda(16384))
    launch(*tensors)
    hook = lambda metadata: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        launch(*tensors)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(kernel.jit_calls) == 2 and kernel.compiled.runs == []
    launch(*tensors)
    assert len(kernel.compiled.runs) == 1


def test_cpu_tensors_always_take_the_jit_path():
    kernel, launch = _launch()
    tensors = (torch.zeros(4), torch.zeros(4), torch.zeros(4))
    for _ in range(3):
        launch(*tensors)
    assert len(kernel.jit_calls) == 3 and launch.compiled is None


def test_direct_launch_off_keeps_the_jit_path(cuda, monkeypatch):
    """An untested Triton release or MHFGEN_JIT_LAUNCH=1: every launch through the JIT."""
    from mhfgen.kernels import launch as launch_module

    monkeypatch.setattr(launch_module, "DIRECT_LAUNCH", False)
    kernel, launch = _launch()
    tensors = (FakeCuda(4096), FakeCuda(8192), FakeCuda(16384))
    for _ in range(3):
        launch(*tensors)
    assert len(kernel.jit_calls) == 3 and launch.compiled is None


@pytest.mark.parametrize("value, direct", [("1", False), ("0", True), ("", True)])
def test_mhfgen_jit_launch_environment_variable(value, direct):
    import os
    import subprocess
    import sys

    code = "import mhfgen.kernels.launch as c; print(c.DIRECT_LAUNCH)"
    env = dict(os.environ, MHFGEN_JIT_LAUNCH=value)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == str(direct)


def test_launch_all_takes_every_argument_and_drops_the_fixed_tail(cuda):
    """launch_all(args): a launcher's full argument tuple, the plan's fixed arguments last;
    the launch gets the per-call part and adds its own tail."""
    kernel, launch = _launch()
    a, b, out = FakeCuda(4096), FakeCuda(8192), FakeCuda(1 << 20)
    launch.launch_all((a, b, out, 96, 37))
    assert kernel.jit_calls == [((5, 2, 1), (a, b, out, 96, 37), META)]
