"""FP8 (e4m3) storage of the expert weights (mhfgen.fp8, FlashMHF.quantize_fp8_): the
per-element bound of mhfgen.fp8 holds, the layer's output is the float64 reference's on
the dequantised weights, and a small language model served in FP8 keeps its loss."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import mhfgen
from mhfgen import reference
from mhfgen.fp8 import E4M3_MAX, ELEMENT_BOUND, FP8_DTYPE, quantize_fp8
from mhfgen.layers import FlashMHF, quantize_fp8_model
from mhfgen.tolerances import relative_error, tolerance


def within_bound(w: torch.Tensor) -> None:
    q = quantize_fp8(w)
    assert q.data.dtype == FP8_DTYPE and q.data.shape == w.shape
    assert q.scale.dtype == torch.float32 and q.scale.shape == w.shape[:-1]
    deq = q.dequantize(torch.float64)
    w64 = w.double()
    rel, floor = ELEMENT_BOUND
    allowed = torch.maximum(rel * w64.abs(), floor * q.scale.double().unsqueeze(-1))
    assert ((deq - w64).abs() <= allowed * (1 + 1e-6)).all()
    # each row's largest element is representable exactly: it maps to E4M3_MAX
    assert (q.data.float().abs().amax(-1)[w.abs().amax(-1) > 0] == E4M3_MAX).all()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 17), st.integers(1, 40)),
    log_scale=st.floats(-30, 30),
    seed=st.integers(0, 2**16),
)
def test_every_element_is_within_the_stated_bound(shape, log_scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0**log_scale
    w[..., 0] *= 1e-9  # tiny entries beside large ones: the subnormal part of the bound
    within_bound(w)


def test_zero_rows_and_16_bit_inputs():
    w = torch.randn(2, 3, 4, 8, dtype=torch.bfloat16)
    w[1, 2] = 0
    within_bound(w)
    q = quantize_fp8(w)
    assert (q.scale[1, 2] == 1).all() and (q.dequantize()[1, 2] == 0).all()


@pytest.mark.parametrize(
    "bad,error",
    [
        (torch.ones(2, 2, 2, dtype=torch.float32), ValueError),
        (torch.ones(1, 1, 1, 2, dtype=torch.int32), TypeError),
        (torch.tensor([[[[1.0, float("nan")]]]]), ValueError),
        ([[[[1.0]]]], TypeError),
    ],
)
def test_bad_weights_are_refused(bad, error):
    with pytest.raises(error):
        quantize_fp8(bad)


def _layer(backend: str, **kw) -> FlashMHF:
    torch.manual_seed(0)
    return FlashMHF(64, 4, 96, 3, n_kv_heads=2, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_the_fp8_layer_computes_flashmhf_on_the_dequantised_weights(backend):
    """The layer's output after quantize_fp8_ is FlashMHF's float64 reference on the
    dequantised K, U, V (to the fp32 tolerance), and within a few percent of the 16-bit
    layer's (the weights' rounding)."""
    layer = _layer(backend)
    x = torch.randn(2, 37, 64)
    dense = layer(x).detach()
    saved = {n: getattr(layer, n).detach().clone() for n in FlashMHF.EXPERT_WEIGHTS}
    assert layer.quantize_fp8_() is layer and layer.quantize_fp8_() is layer
    assert layer.weight_format == "fp8_e4m3" and "weights=fp8_e4m3" in repr(layer)
    assert all(getattr(layer, n) is None for n in FlashMHF.EXPERT_WEIGHTS)
    assert {f"{n}_fp8" for n in FlashMHF.EXPERT_WEIGHTS} <= set(layer.state_dict())
    with torch.no_grad():
        got = layer(x)
        k, u, v = (w.double() for w in layer.expert_weights(torch.float64))
        q = layer.in_proj(x).reshape(2, 37, 4, 16)
        q, r = mhfgen.norm_router.norm_router(
            q, layer.q_norm, layer.router, use_kernels=False, eps=layer.norm_eps
        )
        want = layer.out_proj(
            reference.flash_mhf(q.double(), k, u, v, r.double()).reshape(2, 37, 64).float()
        )
    assert relative_error(got, want) <= tolerance(torch.float32)
    for n in FlashMHF.EXPERT_WEIGHTS:
        deq = layer.expert_weights(torch.float64)[FlashMHF.EXPERT_WEIGHTS.index(n)]
        assert relative_error(deq, saved[n]) < 0.04
    assert relative_error(got, dense) < 0.04


def test_a_quantised_state_dict_loads_into_a_quantised_layer():
    a = _layer("torch").quantize_fp8_()
    b = _layer("torch")
    with torch.no_grad():
        for n in FlashMHF.EXPERT_WEIGHTS:
            getattr(b, n).mul_(2)
    b.quantize_fp8_().load_state_dict(a.state_dict())
    x = torch.randn(1, 5, 64)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="FP8"):
        a.reset_parameters()


def test_a_small_language_model_served_in_fp8_keeps_its_validation_loss():
    """A small LM of mhfgen.lm, trained briefly in fp32 on the CPU, then served with FP8
    expert weights: its validation loss stays within 1% of the 16-bit-weight model's."""
    from mhfgen.lm.model import CausalLM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=64, n_layers=2, n_heads=4, mhf_heads=4, mhf_intermediate=128, mhf_experts=2
    )
    model = CausalLM(cfg)
    for m in model.modules():
        if isinstance(m, FlashMHF):
            m.backend = "torch"
    text = torch.tensor(list(Path(mhfgen.layers.__file__).read_bytes()))
    batches = text[: 16 * 65].view(16, 65)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        _, loss = model(batches[:, :-1], batches[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = text[-8 * 65 :].view(8, 65)

    def val_loss() -> float:
        with torch.no_grad():
            return model(val[:, :-1], val[:, 1:])[1].item()

    dense = val_loss()
    assert quantize_fp8_model(model) == cfg.n_layers
    assert quantize_fp8_model(torch.nn.Linear(2, 2)) == 0
    served = val_loss()
    assert abs(served - dense) <= 0.01 * dense
