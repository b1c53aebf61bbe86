"""Kernels launch on their tensors' device, whatever the current CUDA device is.

Needs two CUDA GPUs (skipped elsewhere, CI included); run on a 2-GPU machine with
`python -m pytest tests/test_multi_gpu.py`. A model spread over GPUs in one process calls
layers whose tensors are not on the current device; Triton's `kernel[grid](...)` launches
on the current device, so the launchers put a device guard around launches where the two
differ (kernels.launch.DirectLaunch, on_device_of). Each test runs the same call on GPU 1
twice, once with GPU 1 current and once with GPU 0 current, and wants the same results:
bitwise for outputs, within bf16's gradient tolerance for gradients (dK/dU/dV with token
splits sum fp32 partials by atomics, in no fixed order).
"""

import mhfgen  # noqa: F401 - first

# isort: split
import pytest
import torch

from mhfgen import FlashMHF
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.verification import Case, make_inputs

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

CASE = Case(
    "multi_gpu", batch=2, seqlen=96, heads=8, kv_heads=4, head_dim=64, experts=4, expert_dim=64
)


def _assert_same(got: list, want: list) -> None:
    assert torch.equal(got[0], want[0])  # the output
    for a, b in zip(got[1:], want[1:]):
        assert a.device == torch.device("cuda:1")
        assert relative_error(a, b) <= tolerance(torch.bfloat16, grad=True)


def _with_current(device: int, fn):
    with torch.cuda.device(device):
        out = fn()
    torch.cuda.synchronize(1)
    return out


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad_direct", "autograd_op"])
def test_core_op_on_gpu1_with_gpu0_current(grad):
    q, k, u, v, r, do = make_inputs(CASE, torch.bfloat16, "cuda:1", seed=5)

    def run():
        leaves = [t.detach().clone().requires_grad_(grad) for t in (q, k, u, v, r)]
        with torch.set_grad_enabled(grad):
            o = mhfgen.flash_mhf(*leaves)
            if grad:
                o.backward(do)
        return [o.detach()] + ([t.grad for t in leaves] if grad else [])

    for _ in range(2):  # the second call reuses the compiled binary (DirectLaunch)
        want = _with_current(1, run)
        got = _with_current(0, run)
        assert got[0].device == torch.device("cuda:1")
        _assert_same(got, want)


def test_layer_on_gpu1_with_gpu0_current():
    torch.manual_seed(0)
    layer = FlashMHF(512, 8, 1024, 4, n_kv_heads=4, device="cuda:1", dtype=torch.bfloat16)
    x = torch.randn(2, 64, 512, device="cuda:1", dtype=torch.bfloat16)

    def run():
        layer.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        y = layer(xx)
        y.float().square().mean().backward()
        return [y.detach(), xx.grad] + [p.grad for p in layer.parameters()]

    for _ in range(2):
        want = _with_current(1, run)
        _assert_same(_with_current(0, run), want)
