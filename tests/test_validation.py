"""Every bad input that docs/CONTRACTS.md (section 2) names raises a clear ValueError or
TypeError before any compute."""

import pytest
import torch

import mhfgen
from mhfgen import reference


def good(B=1, L=3, H=2, Hkv=2, D=16, E=2, De=8, dtype=torch.float32):
    return dict(
        q=torch.randn(B, L, H, D, dtype=dtype),
        k=torch.randn(Hkv, E, De, D, dtype=dtype),
        u=torch.randn(Hkv, E, De, D, dtype=dtype),
        v=torch.randn(Hkv, E, De, D, dtype=dtype),
        r=torch.rand(B, L, H, E),
    )


BAD = [
    ("q not a tensor", dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    ("q 3-d", dict(q=torch.randn(3, 2, 16)), ValueError, r"q must have shape \(B, L, H, D\)"),
    ("u shape differs", dict(u=torch.randn(2, 2, 4, 16)), ValueError, "u must have the shape of k"),
    (
        "k head_dim differs",
        dict(k=torch.randn(2, 2, 8, 8), u=torch.randn(2, 2, 8, 8), v=torch.randn(2, 2, 8, 8)),
        ValueError,
        "head_dim D=16",
    ),
    (
        "r wrong experts",
        dict(r=torch.rand(1, 3, 2, 3)),
        ValueError,
        r"r must have shape \(B, L, H, E\)",
    ),
    (
        "H % Hkv",
        dict(q=torch.randn(1, 3, 3, 16), r=torch.rand(1, 3, 3, 2)),
        ValueError,
        "multiple of k's kv heads",
    ),
    (
        "D too small",
        dict(
            q=torch.randn(1, 3, 2, 8),
            k=torch.randn(2, 2, 8, 8),
            u=torch.randn(2, 2, 8, 8),
            v=torch.randn(2, 2, 8, 8),
        ),
        ValueError,
        "head_dim D must be in 16..256",
    ),
    (
        "int dtype",
        dict(q=torch.zeros(1, 3, 2, 16, dtype=torch.int32)),
        TypeError,
        "unsupported dtype",
    ),
    (
        "mixed dtypes",
        dict(k=torch.randn(2, 2, 8, 16, dtype=torch.float16)),
        TypeError,
        "k must have q's dtype",
    ),
    (
        "r dtype",
        dict(r=torch.rand(1, 3, 2, 2, dtype=torch.float64)),
        TypeError,
        "r must be float32",
    ),
    ("non-unit stride", dict(q=torch.randn(1, 3, 2, 32)[..., ::2]), ValueError, "unit stride"),
    ("mixed devices", dict(r=torch.rand(1, 3, 2, 2, device="meta")), ValueError, "one device"),
]


@pytest.mark.parametrize("fn", [mhfgen.flash_mhf, reference.flash_mhf], ids=["op", "reference"])
@pytest.mark.parametrize("name,override,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise(fn, name, override, exc, match):
    args = {**good(), **override}
    with pytest.raises(exc, match=match):
        fn(**args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_model=30, n_heads=4, intermediate_size=8, n_experts=2), "divisible by n_heads"),
        (dict(d_model=32, n_heads=2, intermediate_size=9, n_experts=2), "divisible by n_experts"),
        (
            dict(d_model=32, n_heads=2, intermediate_size=8, n_experts=2, n_kv_heads=3),
            "multiple of n_kv_heads",
        ),
        (dict(d_model=16, n_heads=2, intermediate_size=8, n_experts=2), "head_dim"),
        (dict(d_model=32, n_heads=2, intermediate_size=8, n_experts=0), "positive int"),
        (dict(d_model=32, n_heads=2, intermediate_size=8, n_experts=2, backend="cuda"), "backend"),
    ],
)
def test_layer_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mhfgen.FlashMHF(**kwargs)


def test_layer_input_shape_error():
    layer = mhfgen.FlashMHF(32, 2, 16, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, d_model=32\)"):
        layer(torch.randn(2, 3, 16))
