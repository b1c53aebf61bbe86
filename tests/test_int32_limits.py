"""Index limits of the kernels: head offsets and rows are 32-bit, token offsets 64-bit.
A view whose head offsets pass 2^31 elements runs through mhfgen.flash_mhf on a
contiguous copy, and is refused with one clear error by a launcher called directly;
calls of 2^31 rows or more are refused before any kernel runs."""
import mhfgen  # noqa: F401 - first: switches Triton's interpreter on
import pytest
import torch

from mhfgen.kernels.flash_mhf_fwd import flash_mhf_fwd
from mhfgen.tolerances import relative_error
from mhfgen.validation import INT32_LIMIT, check_flash_mhf_inputs

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


def _huge_head_stride_q():
    """q (1, 4, 16, 64) viewed out of an fp16 (1, 16, 3145728, 64) buffer: head stride
    201,326,592 elements, the last head 3.0e9 in. Only the 4 tokens used are written
    (torch.empty reserves the rest without touching it)."""
    x = torch.empty((1, 16, 3145728, 64), dtype=torch.float16)
    q = x.transpose(1, 2)[:, :4]
    q.copy_(torch.randn(1, 4, 16, 64, generator=torch.Generator().manual_seed(0)))
    return q


def _weights_and_r(dtype=torch.float16):
    g = torch.Generator().manual_seed(1)
    k, u, v = (torch.randn(4, 2, 32, 64, generator=g).to(dtype) * 0.125 for _ in range(3))
    r = torch.softmax(torch.randn(1, 4, 16, 2, generator=g), -1)
    return k, u, v, r


def test_a_view_with_head_offsets_past_2_to_the_31_runs_through_the_op():
    q = _huge_head_stride_q()
    assert (q.shape[2] - 1) * q.stride(2) >= INT32_LIMIT
    k, u, v, r = _weights_and_r()
    o = mhfgen.flash_mhf(q, k, u, v, r)
    want = mhfgen.reference.flash_mhf(q.contiguous().double(), k.double(), u.double(),
                                      v.double(), r.double())
    assert relative_error(o, want) < 1e-3


def test_a_launcher_called_directly_refuses_such_a_view_in_one_line():
    q = _huge_head_stride_q()
    k, u, v, r = _weights_and_r()
    with pytest.raises(ValueError, match=r"q's last head .*2\^31.*q\.contiguous\(\)"):
        flash_mhf_fwd(q, k, u, v, r)


def test_calls_of_2_to_the_31_rows_are_refused_before_any_kernel_runs():
    H = 16
    tokens = INT32_LIMIT // H
    q = torch.empty(1, tokens, H, 64, device="meta")
    k = torch.empty(4, 2, 32, 64, device="meta")
    r = torch.empty(1, tokens, H, 2, device="meta")
    with pytest.raises(ValueError, match="32-bit row index"):
        check_flash_mhf_inputs(q, k, k, k, r)
    q1 = torch.empty(1, tokens - 1, H, 64, device="meta")
    r1 = torch.empty(1, tokens - 1, H, 2, device="meta")
    assert check_flash_mhf_inputs(q1, k, k, k, r1).tokens == tokens - 1
