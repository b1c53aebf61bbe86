"""mhfgen.integrations.transformers: the authors' FFN layer converted to mhfgen.FlashMHF
against an implementation of their layer's math written here from its description, the
exact round trip, patching a model by parameter layout, and a Llama with FlashMHF FFNs
(a training step, save_pretrained and reload bit for bit). Tiny configs, on the CPU."""

from types import SimpleNamespace

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mhfgen import FlashMHF
from mhfgen.integrations.transformers import (
    flashmhf_llama,
    load_flashmhf_llama,
    load_mhffnmoe_layer,
    patch_model,
    to_mhffnmoe_state_dict,
)

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


def config(**over):
    base = dict(
        hidden_size=64,
        intermediate_size=48,
        mhffnmoe_num_heads=4,
        mhffnmoe_num_kuv_heads=2,
        mhffnmoe_num_experts=3,
        rms_norm_eps=1e-6,
        mhffnmoe_apply_rmsnorm=True,
        mhffnmoe_skip_linear=False,
        mlp_bias=False,
        hidden_act="silu",
    )
    return SimpleNamespace(**{**base, **over})


class _HeadNorm(nn.Module):
    def __init__(self, heads, dim):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.5 * torch.randn(heads, dim))


class AuthorsFFN(nn.Module):
    """The authors' layer as their description states it: same parameter names and
    layouts, math written per head and per expert (not mhfgen.reference)."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        d, inter = cfg.hidden_size, cfg.intermediate_size
        H, Hkv, E = cfg.mhffnmoe_num_heads, cfg.mhffnmoe_num_kuv_heads, cfg.mhffnmoe_num_experts
        D = d // H
        if not cfg.mhffnmoe_skip_linear:
            self.w_self = nn.Linear(d, d, bias=cfg.mlp_bias)
            self.w_self_2 = nn.Linear(d, d, bias=cfg.mlp_bias)
            if cfg.mlp_bias:
                for b in (self.w_self.bias, self.w_self_2.bias):
                    nn.init.normal_(b, std=0.1)
        self.gate_weight = nn.Parameter(0.3 * torch.randn(inter, Hkv * D))
        self.up_weight = nn.Parameter(0.3 * torch.randn(inter, Hkv * D))
        self.down_weight = nn.Parameter(0.3 * torch.randn(inter, Hkv * D))
        self.router = nn.Parameter(0.5 * torch.randn(H, D, E))
        self.q_norm = _HeadNorm(H, D)

    def forward(self, x):
        c = self.config
        B, L, d = x.shape
        H, Hkv, E = c.mhffnmoe_num_heads, c.mhffnmoe_num_kuv_heads, c.mhffnmoe_num_experts
        D, I = d // H, c.intermediate_size
        De = I // E
        q = x if c.mhffnmoe_skip_linear else self.w_self(x)
        q = q.view(B, L, H, D)
        if c.mhffnmoe_apply_rmsnorm:  # the weight multiplied in fp32, then cast back
            qf = q.to(torch.float32)
            qf = qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps)
            q = (qf * self.q_norm.weight.to(torch.float32)).to(x.dtype)

        def experts(w):  # (I, Hkv * D) -> (Hkv, E, De, D)
            return w.view(I, Hkv, D).transpose(0, 1).reshape(Hkv, E, De, D)

        K, U, V = experts(self.gate_weight), experts(self.up_weight), experts(self.down_weight)
        gates = torch.sigmoid(torch.einsum("blhd,hde->blhe", q.float(), self.router.float()))
        R = gates / gates.sum(-1, keepdim=True).clamp(min=1e-20)
        out = []
        for h in range(H):
            g = h // (H // Hkv)
            acc = torch.zeros(B, L, D, dtype=torch.float32)
            for e in range(E):
                act = F.silu(q[:, :, h] @ K[g, e].T) * (q[:, :, h] @ U[g, e].T)
                acc = acc + (act @ V[g, e]).float() * R[:, :, h, e : e + 1]
            out.append(acc)
        o = torch.stack(out, dim=2).to(x.dtype).reshape(B, L, d)
        return o if c.mhffnmoe_skip_linear else self.w_self_2(o)


CASES = {
    "default": {},
    "bias": dict(mlp_bias=True),
    "skip-linear": dict(mhffnmoe_skip_linear=True),
    "no-rmsnorm": dict(mhffnmoe_apply_rmsnorm=False),
    "mha-one-expert": dict(mhffnmoe_num_kuv_heads=4, mhffnmoe_num_experts=1),
}


def _x(scale=1.0):
    torch.manual_seed(1)
    return scale * torch.randn(2, 5, 64)


@pytest.mark.parametrize("over", CASES.values(), ids=CASES.keys())
def test_converted_layer_computes_the_authors_layer(over):
    torch.manual_seed(0)
    authors = AuthorsFFN(config(**over))
    layer = load_mhffnmoe_layer(authors.state_dict(), authors.config, backend="torch")
    for scale in (1.0, 3e-3):  # small inputs: the norm's epsilon decides the output
        x = _x(scale)
        want = authors(x)
        got = layer(x)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * want.abs().max().item())


def test_the_norm_epsilon_is_the_configs():
    torch.manual_seed(0)
    authors = AuthorsFFN(config())
    x = _x(3e-3)
    want = authors(x)
    torch.testing.assert_close(
        load_mhffnmoe_layer(authors.state_dict(), authors.config)(x),
        want,
        rtol=2e-5,
        atol=2e-5 * want.abs().max().item(),
    )
    other = load_mhffnmoe_layer(authors.state_dict(), config(rms_norm_eps=1e-5))
    assert not torch.allclose(other(x), want, rtol=1e-2)  # the case above can fail


def test_converted_layer_on_the_kernels_matches_values_and_gradients():
    torch.manual_seed(0)
    authors = AuthorsFFN(config(mlp_bias=True))
    layer = load_mhffnmoe_layer(authors.state_dict(), authors.config, backend="triton")
    x = _x().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    want = authors(x)
    got = layer(x2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(want)
    want.backward(dy)
    got.backward(dy)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    grads = {k: v.grad for k, v in authors.named_parameters()}
    mapped = to_mhffnmoe_state_dict(_grads_as_layer(layer))
    for key in (
        "gate_weight",
        "up_weight",
        "down_weight",
        "router",
        "q_norm.weight",
        "w_self.weight",
        "w_self.bias",
        "w_self_2.weight",
    ):
        torch.testing.assert_close(mapped[key], grads[key], rtol=2e-4, atol=1e-5, msg=key)


def _grads_as_layer(layer):
    """A copy of `layer` whose parameters are its gradients (to map them by name)."""
    import copy

    out = copy.deepcopy(layer)
    with torch.no_grad():
        for (_, p), (_, q) in zip(layer.named_parameters(), out.named_parameters()):
            q.copy_(p.grad)
    return out


@pytest.mark.parametrize("over", CASES.values(), ids=CASES.keys())
def test_round_trip_is_exact(over):
    torch.manual_seed(0)
    authors = AuthorsFFN(config(**over)).to(torch.bfloat16)
    sd = authors.state_dict()
    layer = load_mhffnmoe_layer(sd, authors.config)
    assert layer.router.dtype == torch.bfloat16
    back = to_mhffnmoe_state_dict(layer)
    assert set(back) == set(sd)
    for key in sd:
        assert back[key].dtype == sd[key].dtype and torch.equal(back[key], sd[key]), key


def test_bad_configs_and_state_dicts_are_one_line_errors():
    torch.manual_seed(0)
    sd = AuthorsFFN(config()).state_dict()
    with pytest.raises(ValueError, match="mhffnmoe_apply_dot_scaling=True is not computed"):
        load_mhffnmoe_layer(sd, config(mhffnmoe_apply_dot_scaling=True))
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        load_mhffnmoe_layer(sd, config(hidden_act="gelu"))
    with pytest.raises(ValueError, match="no attribute 'mhffnmoe_num_experts'"):
        cfg = config()
        del cfg.mhffnmoe_num_experts
        load_mhffnmoe_layer(sd, cfg)
    with pytest.raises(ValueError, match=r"unexpected \['w_self.weight', 'w_self_2.weight'\]"):
        load_mhffnmoe_layer(sd, config(mhffnmoe_skip_linear=True))
    bad = dict(sd, router=torch.zeros(4, 16, 2))
    with pytest.raises(ValueError, match=r"router must have shape \(4, 16, 3\)"):
        load_mhffnmoe_layer(bad, config())
    with pytest.raises(TypeError, match="must be an mhfgen.FlashMHF"):
        to_mhffnmoe_state_dict(nn.Linear(2, 2))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.feed_forward = AuthorsFFN(cfg)

    def forward(self, x):
        return x + self.feed_forward(self.norm(x))


def test_patch_model_replaces_every_layer_found_by_its_parameters():
    torch.manual_seed(0)
    cfg = config(mlp_bias=True)
    model = nn.Sequential(Block(cfg), nn.Linear(64, 64), Block(cfg))
    x = _x()
    want = model(x)
    w_self = model[0].feed_forward.w_self.weight
    assert patch_model(model, backend="torch") == 2
    assert model[0].feed_forward.in_proj.weight.data_ptr() == w_self.data_ptr()  # the same
    assert isinstance(model[0].feed_forward, FlashMHF) and isinstance(
        model[2].feed_forward, FlashMHF
    )
    assert isinstance(model[1], nn.Linear) and isinstance(model[0].norm, nn.LayerNorm)
    torch.testing.assert_close(model(x), want, rtol=2e-5, atol=1e-6)
    assert patch_model(model) == 0  # nothing left to patch


def test_patch_model_needs_the_layers_config():
    torch.manual_seed(0)
    block = Block(config())
    del block.feed_forward.config
    with pytest.raises(
        ValueError, match="feed_forward .AuthorsFFN. has the mhffnmoe FFN parameters but no .config"
    ):
        patch_model(block)


def _llama_config(**over):
    from transformers import LlamaConfig

    return LlamaConfig(
        **{
            **dict(
                vocab_size=64,
                hidden_size=64,
                intermediate_size=48,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=32,
            ),
            **over,
        }
    )


def test_flashmhf_llama_trains_and_reloads_bit_for_bit(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = flashmhf_llama(_llama_config(), n_heads=4, n_experts=3, n_kv_heads=2)
    assert isinstance(model, LlamaForCausalLM)
    for layer in model.model.layers:
        mlp = layer.mlp
        assert isinstance(mlp, FlashMHF)
        assert (mlp.d_model, mlp.n_heads, mlp.n_kv_heads, mlp.intermediate_size, mlp.n_experts) == (
            64,
            4,
            2,
            48,
            3,
        )
    assert model.config.intermediate_size == 48
    ids = torch.randint(0, 64, (2, 12))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(
            p.grad is not None and torch.isfinite(p.grad).all()
            for p in model.model.layers[0].mlp.parameters()
        )
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.save_pretrained(tmp_path)
    again = load_flashmhf_llama(tmp_path)
    want, got = model.state_dict(), again.state_dict()
    assert set(want) == set(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_flashmhf_llama_on_the_kernels_and_tied_embeddings(tmp_path):
    torch.manual_seed(0)
    model = flashmhf_llama(
        _llama_config(tie_word_embeddings=True), n_heads=2, n_experts=2, backend="triton"
    ).eval()
    reference = flashmhf_llama(
        _llama_config(tie_word_embeddings=True), n_heads=2, n_experts=2, backend="torch"
    ).eval()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
    model.save_pretrained(tmp_path)
    again = load_flashmhf_llama(tmp_path, backend="triton")
    assert again.lm_head.weight is again.get_input_embeddings().weight
    assert again.model.layers[0].mlp.backend == "triton"
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )


def test_load_flashmhf_llama_refuses_a_plain_llama(tmp_path):
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(_llama_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'flashmhf' entry"):
        load_flashmhf_llama(tmp_path)
