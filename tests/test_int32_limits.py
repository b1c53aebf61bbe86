"""Index limits of the kernels: head offsets and rows are 32-bit, token offsets 64-bit.
A view whose head offsets pass 2^31 elements runs through mhfgen.flash_mhf on a
contiguous copy, and is refused with one clear error by a launcher called directly;
calls of 2^31 rows or more are refused before any kernel runs."""

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhfgen.tolerances import relative_error
from mhfgen.validation import INT32_LIMIT, check_flash_mhf_inputs
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd

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
    want = mhfgen.reference.flash_mhf(
        q.contiguous().double(), k.double(), u.double(), v.double(), r.double()
    )
    assert relative_error(o, want) < 1e-3


def test_a_launcher_called_directly_refuses_such_a_view_in_one_line():
    q = _huge_head_stride_q()
    k, u, v, r = _weights_and_r()
    with pytest.raises(ValueError, match=r"q.s strides .*2\^31.*q\.contiguous\(\)"):
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


def test_r_with_an_expert_stride_past_2_to_the_31_runs_through_the_op():
    """r viewed out of an (E, B, L, H) buffer: its expert stride is tokens x heads."""
    k, u, v, _ = _weights_and_r()
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 16, 64, generator=g).half()
    buf = torch.empty((2, 1, 2**27, 16), dtype=torch.float16)  # expert stride 2^31
    r = buf.permute(1, 2, 3, 0)[:, :4]
    r.copy_(torch.softmax(torch.randn(1, 4, 16, 2, generator=g), -1))
    assert (r.shape[3] - 1) * r.stride(3) >= INT32_LIMIT
    o = mhfgen.flash_mhf(q, k, u, v, r)
    want = mhfgen.reference.flash_mhf(
        q.double(), k.double(), u.double(), v.double(), r.contiguous().double()
    )
    assert relative_error(o, want) < 1e-3


# -- the shape checks, property-based -----------------------------------------------------
_BREAKS = [
    "none",
    "none",
    "none",
    "none",
    "r_experts",
    "r_dtype",
    "w_dtype",
    "heads",
    "head_dim_small",
    "head_dim_large",
    "last_stride",
    "u_shape",
    "q_int",
    "r_rank",
]


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    B=st.integers(0, 2),
    L=st.integers(0, 5),
    Hkv=st.integers(1, 2),
    group=st.integers(1, 2),
    D=st.sampled_from([16, 32]),
    E=st.integers(1, 2),
    De=st.sampled_from([16, 40]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    r_narrow=st.booleans(),
    breaks=st.sampled_from(_BREAKS),
)
def test_any_input_is_computed_right_or_refused_in_one_line(
    B, L, Hkv, group, D, E, De, dtype, r_narrow, breaks
):
    """A valid call, or one broken in one way: mhfgen.flash_mhf either refuses it with a
    ValueError or TypeError naming the problem before any kernel runs, or returns the
    reference's answer; nothing else (no other exception, no crash, no wrong number)."""
    g = torch.Generator().manual_seed(0)
    H = Hkv * group + (1 if breaks == "heads" and Hkv > 1 else 0)
    if breaks == "head_dim_small":
        D = 8
    elif breaks == "head_dim_large":
        D = 300
    q = torch.randn(B, L, H, D * (2 if breaks == "last_stride" else 1), generator=g)
    q = (q[..., ::2] if breaks == "last_stride" else q).to(
        torch.int32 if breaks == "q_int" else dtype
    )
    w_dtype = torch.float64 if breaks == "w_dtype" else dtype
    k, u, v = (0.25 * torch.randn(Hkv, E, De, D, generator=g)).to(w_dtype), None, None
    u = (0.25 * torch.randn(Hkv, E, De + (1 if breaks == "u_shape" else 0), D, generator=g)).to(
        w_dtype
    )
    v = (0.25 * torch.randn(Hkv, E, De, D, generator=g)).to(w_dtype)
    r = torch.softmax(
        torch.randn(B, L, H, E + (1 if breaks == "r_experts" else 0), generator=g), -1
    )
    r = r.to(torch.int64 if breaks == "r_dtype" else (dtype if r_narrow else torch.float32))
    if breaks == "r_rank":
        r = r[..., 0]
    try:
        check_flash_mhf_inputs(q, k, u, v, r)
    except (ValueError, TypeError) as exc:
        assert str(exc) and breaks != "none"
        with pytest.raises(type(exc)):
            mhfgen.flash_mhf(q, k, u, v, r)
        return
    o = mhfgen.flash_mhf(q, k, u, v, r)
    want = mhfgen.reference.flash_mhf(*(t.double() for t in (q, k, u, v, r)))
    assert o.shape == q.shape and o.dtype == q.dtype
    assert relative_error(o, want) < (1e-5 if dtype == torch.float32 else 5e-3)


def test_the_split_forward_keeps_its_workspace_offsets_below_2_to_the_31():
    """A split-intermediate config at 2^31 output elements runs as one split (the kernel
    offsets a split's workspace by split x B * L * H * D in 32 bits). Only the plan is
    made: the tensors are reserved, never touched."""
    import importlib

    from mhfgen.variants.flash_mhf_fwd import Config as Fwd

    fwd = importlib.import_module("mhfgen.variants.flash_mhf_fwd")

    q = torch.empty(1, 2**21, 16, 64, dtype=torch.float16)
    k = torch.empty(4, 2, 64, 64, dtype=torch.float16)
    r = torch.empty(1, 2**21, 16, 2)
    config = Fwd(block_m=16, block_n=32, inter_splits=3)
    assert fwd._make_plan(q, k, k, k, r, config).splits == 1
    small = q[:, :1024]
    assert fwd._make_plan(small, k, k, k, r[:, :1024], config).splits > 1
