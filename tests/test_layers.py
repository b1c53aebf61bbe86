"""The FlashMHF and SwiGLU modules."""

import pytest
import torch

import mhfgen
from mhfgen import reference


def make_layer(**kw):
    torch.manual_seed(0)
    args = dict(d_model=64, n_heads=2, intermediate_size=64, n_experts=2, n_kv_heads=1)
    args.update(kw)
    return mhfgen.FlashMHF(**args)


def test_shapes_and_parameter_count():
    layer = make_layer(qk_norm=False)
    d, I, E = 64, 64, 2
    n_params = sum(p.numel() for p in layer.parameters())
    # 2 d^2 + 3 (Hkv/H) d I + d E: the kv heads are shared (Hkv = 1 of 2 heads)
    assert n_params == 2 * d * d + 3 * d * I // 2 + d * E
    y = layer(torch.randn(3, 5, 64))
    assert y.shape == (3, 5, 64)
    full = make_layer(n_kv_heads=None)
    assert sum(p.numel() for p in full.parameters()) == 2 * d * d + 3 * d * I + d * E + d


def test_every_parameter_gets_a_gradient():
    layer = make_layer(bias=True)
    layer(torch.randn(2, 4, 64)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_matches_layer_reference():
    layer = make_layer().double()
    x = torch.randn(2, 3, 64, dtype=torch.float64)
    want = reference.flash_mhf_layer(
        x,
        layer.in_proj.weight,
        layer.out_proj.weight,
        layer.router,
        layer.key,
        layer.up,
        layer.value,
        layer.q_norm,
    )
    torch.testing.assert_close(layer(x), want)


def test_backends_agree_on_cpu():
    x = torch.randn(2, 5, 64)
    torch_layer = make_layer(backend="torch")
    auto = make_layer(backend="auto")
    triton = make_layer(backend="triton")
    auto.load_state_dict(torch_layer.state_dict())
    triton.load_state_dict(torch_layer.state_dict())
    y = torch_layer(x)
    torch.testing.assert_close(auto(x), y)  # auto on CPU is the reference
    torch.testing.assert_close(triton(x), y, rtol=1e-5, atol=1e-6)  # kernels, interpreter


def test_triton_backend_gradients_match_torch_backend():
    x = torch.randn(1, 7, 64)
    a, b = make_layer(backend="torch"), make_layer(backend="triton")
    b.load_state_dict(a.state_dict())
    a(x).sum().backward()
    b(x).sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_state_dict_round_trip():
    a, b = make_layer(), make_layer()
    torch.manual_seed(1)
    b.reset_parameters()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64)
    torch.testing.assert_close(a(x), b(x))
    assert set(a.state_dict()) == {
        "in_proj.weight",
        "out_proj.weight",
        "router",
        "key",
        "up",
        "value",
        "q_norm",
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_and_device_arguments(dtype):
    layer = mhfgen.FlashMHF(64, 2, 32, 2, device="cpu", dtype=dtype)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in layer.parameters())
    assert layer(torch.randn(1, 2, 64, dtype=dtype)).dtype == dtype
    swiglu = mhfgen.SwiGLU(64, 96, device="cpu", dtype=dtype)
    assert all(p.dtype == dtype for p in swiglu.parameters())


def test_init_statistics():
    layer = mhfgen.FlashMHF(256, 4, 1024, 4)
    assert abs(layer.key.std().item() - 0.02) < 0.002
    assert layer.router.abs().max().item() <= 0.04 + 1e-6
    bound = 0.707 * (6 / (256 + 256)) ** 0.5
    assert layer.in_proj.weight.abs().max().item() <= bound + 1e-6


def test_swiglu_forward_and_flops_match():
    torch.manual_seed(0)
    m = mhfgen.SwiGLU(32, 48)
    x = torch.randn(2, 3, 32)
    want = (
        torch.nn.functional.silu(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)
    ) @ m.down_proj.weight.T
    torch.testing.assert_close(m(x), want)
    assert sum(p.numel() for p in m.parameters()) == 3 * 32 * 48
    with pytest.raises(ValueError, match="intermediate_size"):
        mhfgen.SwiGLU(32, 0)


def test_autocast_runs_the_core_in_the_autocast_dtype_and_the_router_in_fp32():
    layer = make_layer(backend="torch")
    x = torch.randn(1, 4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        q = layer.in_proj(x).view(1, 4, 2, 32)
        r = reference.router(q, layer.router)
    assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer(x), rtol=5e-2, atol=5e-2)


def test_layer_compiles_fullgraph_with_its_norm_router_function():
    """The analytic norm + router backward (an autograd.Function) traces with dynamo."""
    import mhfgen

    torch.manual_seed(0)
    m = mhfgen.FlashMHF(64, 4, 128, 4, backend="torch")
    x = torch.randn(2, 5, 64, requires_grad=True)
    m(x).sum().backward()
    eager = x.grad.clone()
    x.grad = None
    torch.compile(m, fullgraph=True, backend="aot_eager")(x).sum().backward()
    torch.testing.assert_close(x.grad, eager)
