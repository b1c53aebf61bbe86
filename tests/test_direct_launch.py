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


# ---------------------------------------------------------------------------------------
# TMA operands: encoded once per address on the direct path (EncodedLaunch)
# ---------------------------------------------------------------------------------------


class FakeView(FakeCuda):
    """A 2-D CUDA view as a TMA operand's base: address, device, shape and strides."""

    def __init__(self, ptr: int, shape=(256, 512), device: int = 0) -> None:
        super().__init__(ptr, device)
        self.shape, self._stride = shape, (shape[1], 1)

    def stride(self):
        return self._stride


class RecordingLauncher:
    """A C launcher: records the positional arguments of every launch."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


#: the fake kernel's parameters: two descriptors, one pointer, then the fixed tail
TMA_SIGNATURE = {
    0: "tensordesc<bf16[64, 128]>",
    1: "tensordesc<bf16[64, 128]>",
    2: "*fp32",
    3: "i32",
    4: "i32",
    5: "constexpr",
    6: "constexpr",
    7: "constexpr",
}
TMA_META = [{"swizzle": 3}, {"swizzle": 2}]


class FakeTmaRun:
    """A CudaLauncher whose launch is Triton's own descriptor wrapper around a C launcher."""

    launch_cooperative_grid, launch_pdl = False, False

    def __init__(self, c_launcher, scratch: int = 0, metas=TMA_META) -> None:
        from triton.backends.nvidia.driver import wrap_handle_tensordesc

        self.launch = wrap_handle_tensordesc(c_launcher, TMA_SIGNATURE, metas)
        self.global_scratch_size = self.profile_scratch_size = scratch
        self.python_runs = []

    def __call__(self, *args):
        self.python_runs.append(args)


class FakeTmaCompiled(FakeCompiled):
    def __init__(self, **run) -> None:
        super().__init__()
        self.c_launcher = RecordingLauncher()
        self.run = FakeTmaRun(self.c_launcher, **run)


@pytest.fixture
def encoder(monkeypatch):
    """Triton's make_tensordesc_arg stood in for (no CUDA driver): a named map per (view
    address, metadata), then the shape and strides, counting the encodings; Tma's
    descriptor a stand-in naming its base."""
    from triton.backends.nvidia import driver

    from mhfgen.kernels.launch import Tma

    calls = []

    def encode(desc, meta):
        calls.append(desc)
        base = desc[1] if isinstance(desc, tuple) else desc.base
        return [f"map@{base.ptr}/{meta['swizzle']}", *base.shape, *base.stride()]

    monkeypatch.setattr(driver, "make_tensordesc_arg", encode)
    monkeypatch.setattr(Tma, "descriptor", lambda self: ("desc", self.base))
    return calls


def _tma_launch(**run):
    kernel = FakeJit()
    kernel.compiled = FakeTmaCompiled(**run)
    return kernel, DirectLaunch(kernel, (5, 2), (96, 37), META)


def test_tma_operands_reach_the_c_launcher_encoded_once_per_address(cuda, encoder):
    """The JIT launch gets TensorDescriptors; later launches call the C launcher with the
    expansion Triton's wrapper would make, encoding each operand once per address, shape
    and strides."""
    from mhfgen.kernels.launch import Tma

    kernel, launch = _tma_launch()
    qa, ka, out = FakeView(4096), FakeView(1 << 16, (128, 128)), FakeCuda(1 << 20)
    layout = object()
    launch(Tma(qa, [64, 128], layout), Tma(ka, [64, 128], layout), out)
    ((_, jit_args, _),) = kernel.jit_calls
    assert jit_args[:2] == (("desc", qa), ("desc", ka)) and jit_args[2] is out
    for _ in range(3):
        launch(Tma(qa, [64, 128], layout), Tma(ka, [64, 128], layout), out)
    calls = kernel.compiled.c_launcher.calls
    assert len(calls) == 3 and kernel.compiled.run.python_runs == []
    head = (5, 2, 1, 1234, "cu-function", False, False, None, None, "packed", None, None)
    expanded = ("map@4096/3", 256, 512, 512, 1, "map@65536/2", 128, 128, 128, 1)
    assert calls[0] == (*head, None, *expanded, out, 96, 37, 64, 32, 7)
    assert len(encoder) == 2  # encoded on the first direct launch only
    launch(Tma(FakeView(8192), [64, 128], layout), Tma(ka, [64, 128], layout), out)
    assert len(encoder) == 3 and calls[-1][13] == "map@8192/3"
    launch(Tma(FakeView(8192, (128, 512)), [64, 128], layout), Tma(ka, [64, 128], layout), out)
    assert len(encoder) == 4 and calls[-1][14:16] == (128, 512)  # a new shape: re-encoded


def test_encoded_expansion_is_tritons_own(cuda, encoder):
    """The arguments reaching the C launcher are those Triton's descriptor wrapper passes
    for the same TensorDescriptors."""
    from mhfgen.kernels.launch import Tma

    kernel, launch = _tma_launch()
    qa, ka, out = FakeView(4096), FakeView(1 << 16), FakeCuda(1 << 20)
    operands = (Tma(qa, [64, 128], None), Tma(ka, [64, 128], None), out)
    launch(*operands)
    launch(*operands)
    ours = kernel.compiled.c_launcher.calls[-1]
    kernel.compiled.run.launch(
        5, 2, 1, 1234, "cu-function", False, False, None, None, "packed", None, None, None,
        ("desc", qa), ("desc", ka), out, 96, 37, 64, 32, 7,
    )  # fmt: skip
    assert kernel.compiled.c_launcher.calls[-1] == ours


def test_encoded_operands_are_bounded(cuda, encoder):
    from mhfgen.kernels.launch import ENCODED_PER_PARAMETER, Tma

    kernel, launch = _tma_launch()
    ka, out = FakeView(1 << 16), FakeCuda(1 << 20)
    for i in range(3 * ENCODED_PER_PARAMETER):
        launch(Tma(FakeView(4096 * (i + 1)), [64, 128], None), Tma(ka, [64, 128], None), out)
    assert len(launch.encoded.cache) <= 2 * ENCODED_PER_PARAMETER


@pytest.mark.parametrize("run", [dict(scratch=256), dict(metas=[None, None])])
def test_launchers_the_encoding_cannot_stand_for_take_run(cuda, encoder, run):
    """Scratch memory allocated per launch, or descriptors without metadata: the binary's
    own `run` launches, with TensorDescriptors."""
    from mhfgen.kernels.launch import Tma

    kernel, launch = _tma_launch(**run)
    qa, ka = FakeView(4096), FakeView(8192)
    operands = (Tma(qa, [64, 128], None), Tma(ka, [64, 128], None))
    launch(*operands, FakeCuda(1 << 20))
    launch(*operands, FakeCuda(1 << 20))
    assert launch.encoded is None and kernel.compiled.c_launcher.calls == []
    (run_args,) = kernel.compiled.run.python_runs
    assert run_args[9:11] == (("desc", qa), ("desc", ka))


def test_kernels_without_descriptors_keep_the_binarys_run(cuda):
    kernel, launch = _launch()
    launch(FakeCuda(4096), FakeCuda(8192), FakeCuda(16384))
    assert launch.compiled is kernel.compiled and launch.encoded is None


def test_a_callers_descriptor_is_encoded_on_every_call(cuda, encoder):
    """Only Tma operands are kept encoded: a TensorDescriptor a caller built (its padding
    may differ at the same address) is encoded per call, as Triton's wrapper does."""
    from mhfgen.kernels.launch import Tma

    kernel, launch = _tma_launch()
    own = FakeDescriptor(FakeView(4096))
    operands = (own, Tma(FakeView(8192), [64, 128], None), FakeCuda(1 << 20))
    for _ in range(3):
        launch(*operands)
    assert encoder.count(own) == 2 and len(encoder) == 3  # two direct launches, Tma once
