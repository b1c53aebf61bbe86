"""Hugging Face transformers: the paper authors' model format, and Llama with a FlashMHF FFN.

Needs `transformers` only for flashmhf_llama / load_flashmhf_llama
(`pip install .[transformers]`); the converters work on plain state dicts.

The authors' layout ("mhffnmoe" models, MHFFNMoEForCausalLM). Their FFN layer holds, for
d = hidden_size, H = mhffnmoe_num_heads heads of width D = d / H, Hkv =
mhffnmoe_num_kuv_heads, E = mhffnmoe_num_experts, I = intermediate_size, De = I / E:

    w_self.weight, w_self.bias      (d, d), (d,)      Q = x w_self^T (+ bias)     }  absent with
    w_self_2.weight, w_self_2.bias  (d, d), (d,)      y = O w_self_2^T (+ bias)   }  skip_linear
    gate_weight, up_weight, down_weight   (I, Hkv * D)                  biases only with mlp_bias
    router          (H, D, E)
    q_norm.weight   (H, D)          applied only with mhffnmoe_apply_rmsnorm

and computes, with Q viewed (B, L, H, D):

    Q = rmsnorm_h(Q) = fp32(Q) / sqrt(mean_D(fp32(Q)^2) + rms_norm_eps) * q_norm.weight[h]
        (multiplied in fp32, then rounded to Q's dtype)           [mhffnmoe_apply_rmsnorm]
    K = gate_weight.view(I, Hkv, D).transpose(0, 1).view(Hkv, E, De, D), U and V likewise
    R = sigmoid(fp32(Q) router[h]) / max(sum_e sigmoid(...), 1e-20)
    O[h] = sum_e R[h, e] (silu(Q[h] K[g, e]^T) * (Q[h] U[g, e]^T)) V[g, e],  g = h // (H / Hkv)

which is mhfgen.FlashMHF with in_proj = w_self, out_proj = w_self_2 (projections=False
under skip_linear), key/up/value = K/U/V (copied into that layout), router and q_norm as
they are (qk_norm = apply_rmsnorm, norm_eps = rms_norm_eps). The converter refuses the
options FlashMHF does not compute (a hidden_act other than silu, dot or final scaling)
instead of converting them into a different function.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..layers import FlashMHF

log = logging.getLogger(__name__)

#: parameters every authors' FFN layer holds, relative to the layer
CORE_KEYS = ("gate_weight", "up_weight", "down_weight", "router", "q_norm.weight")
#: the projections' parameters (absent under mhffnmoe_skip_linear; biases with mlp_bias)
PROJ_KEYS = ("w_self.weight", "w_self_2.weight")
BIAS_KEYS = ("w_self.bias", "w_self_2.bias")
#: the buffer of a converted layer that keeps an unused q_norm.weight (apply_rmsnorm off)
UNUSED_NORM = "mhffnmoe_q_norm"
#: the attribute of a LlamaConfig that flashmhf_llama writes and load_flashmhf_llama reads
LLAMA_CONFIG_KEY = "flashmhf"

_OFF_OPTIONS = ("mhffnmoe_apply_dot_scaling", "mhffnmoe_apply_final_scaling")


@dataclass(frozen=True)
class MHFFNMoESizes:
    """The attributes of an authors' config that decide the FFN layer."""

    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    experts: int
    rms_norm_eps: float
    apply_rmsnorm: bool
    skip_linear: bool
    bias: bool

    @classmethod
    def of(cls, config) -> MHFFNMoESizes:
        """From a transformers config or any object with the authors' attribute names;
        ValueError naming what is missing or what FlashMHF does not compute."""

        def get(name, default=None, required=True):
            if not hasattr(config, name):
                if required:
                    raise ValueError(
                        f"the config has no attribute {name!r} (an 'mhffnmoe' "
                        f"config names hidden_size, intermediate_size, "
                        f"mhffnmoe_num_heads, mhffnmoe_num_experts, ...)"
                    )
                return default
            return getattr(config, name)

        for name in _OFF_OPTIONS:
            if get(name, False, required=False):
                raise ValueError(
                    f"{name}=True is not computed by mhfgen.FlashMHF; "
                    f"convert only configs with it off"
                )
        act = get("hidden_act", "silu", required=False)
        if act != "silu":
            raise ValueError(f"hidden_act={act!r}: mhfgen.FlashMHF computes silu only")
        heads = get("mhffnmoe_num_heads")
        kv_heads = get("mhffnmoe_num_kuv_heads", None, required=False) or heads
        return cls(
            get("hidden_size"),
            get("intermediate_size"),
            heads,
            kv_heads,
            get("mhffnmoe_num_experts"),
            float(get("rms_norm_eps", 1e-6, False)),
            bool(get("mhffnmoe_apply_rmsnorm", False, False)),
            bool(get("mhffnmoe_skip_linear", False, False)),
            bool(get("mlp_bias", False, False)),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def expert_dim(self) -> int:
        return self.intermediate_size // self.experts

    def keys(self) -> set[str]:
        """The state-dict keys of a layer of these sizes."""
        keys = set(CORE_KEYS)
        if not self.skip_linear:
            keys.update(PROJ_KEYS)
            if self.bias:
                keys.update(BIAS_KEYS)
        return keys


def _kuv_from_authors(w: torch.Tensor, s: MHFFNMoESizes) -> torch.Tensor:
    """(I, Hkv * D) -> (Hkv, E, De, D): view (I, Hkv, D), transpose, view the experts."""
    return (
        w.view(s.intermediate_size, s.kv_heads, s.head_dim)
        .transpose(0, 1)
        .reshape(s.kv_heads, s.experts, s.expert_dim, s.head_dim)
    )


def _kuv_to_authors(w: torch.Tensor) -> torch.Tensor:
    """(Hkv, E, De, D) -> (I, Hkv * D), the inverse of _kuv_from_authors."""
    hkv, e, de, d = w.shape
    return w.permute(1, 2, 0, 3).reshape(e * de, hkv * d)


def load_mhffnmoe_layer(
    state_dict: dict, config, backend: str = "auto", device=None, dtype=None
) -> FlashMHF:
    """An mhfgen.FlashMHF computing the authors' FFN layer of `state_dict` (keys relative
    to the layer: gate_weight, ..., w_self.weight) and `config` (see the module doc).

    The tensors keep their dtype and device unless `dtype` / `device` are given; those
    whose layout is FlashMHF's (projections, router, norm weight) are used as they are,
    K/U/V are copied into (Hkv, E, De, D). to_mhffnmoe_state_dict inverts it exactly."""
    s = MHFFNMoESizes.of(config)
    got, want = set(state_dict), s.keys()
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        raise ValueError(
            f"not an mhffnmoe FFN state dict for this config: "
            f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}"
        )
    first = state_dict["gate_weight"]
    factory = {
        "device": device if device is not None else first.device,
        "dtype": dtype if dtype is not None else first.dtype,
    }
    kuv = (s.intermediate_size, s.kv_heads * s.head_dim)
    d = s.hidden_size
    expected = {
        "gate_weight": kuv,
        "up_weight": kuv,
        "down_weight": kuv,
        "router": (s.heads, s.head_dim, s.experts),
        "q_norm.weight": (s.heads, s.head_dim),
        "w_self.weight": (d, d),
        "w_self_2.weight": (d, d),
        "w_self.bias": (d,),
        "w_self_2.bias": (d,),
    }
    for key, tensor in state_dict.items():
        shape = expected[key]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{key} must have shape {shape} for this config, got {got}")
    with torch.device("meta"):  # parameters are assigned below; nothing to initialise
        layer = FlashMHF(
            s.hidden_size,
            s.heads,
            s.intermediate_size,
            s.experts,
            s.kv_heads,
            qk_norm=s.apply_rmsnorm,
            bias=s.bias,
            backend=backend,
            norm_eps=s.rms_norm_eps,
            projections=not s.skip_linear,
        )

    def param(t: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(t.detach().to(**factory))

    if not s.skip_linear:
        for proj, name in ((layer.in_proj, "w_self"), (layer.out_proj, "w_self_2")):
            proj.weight = param(state_dict[f"{name}.weight"])
            if s.bias:
                proj.bias = param(state_dict[f"{name}.bias"])
    layer.key = param(_kuv_from_authors(state_dict["gate_weight"], s))
    layer.up = param(_kuv_from_authors(state_dict["up_weight"], s))
    layer.value = param(_kuv_from_authors(state_dict["down_weight"], s))
    layer.router = param(state_dict["router"])
    if s.apply_rmsnorm:
        layer.q_norm = param(state_dict["q_norm.weight"])
    else:  # unused by the authors' forward too, kept for the round trip
        layer.register_buffer(
            UNUSED_NORM, state_dict["q_norm.weight"].detach().to(**factory), persistent=False
        )
    return layer


def to_mhffnmoe_state_dict(layer: FlashMHF) -> dict[str, torch.Tensor]:
    """The authors' state dict of a FlashMHF layer (the inverse of load_mhffnmoe_layer;
    for a layer made otherwise, an unused q_norm.weight of ones where it has no norm)."""
    if not isinstance(layer, FlashMHF):
        raise TypeError(f"layer must be an mhfgen.FlashMHF, got {type(layer).__name__}")
    out: dict[str, torch.Tensor] = {}
    for proj, name in ((layer.in_proj, "w_self"), (layer.out_proj, "w_self_2")):
        if proj is not None:
            out[f"{name}.weight"] = proj.weight.detach()
            if proj.bias is not None:
                out[f"{name}.bias"] = proj.bias.detach()
    out["gate_weight"] = _kuv_to_authors(layer.key.detach())
    out["up_weight"] = _kuv_to_authors(layer.up.detach())
    out["down_weight"] = _kuv_to_authors(layer.value.detach())
    out["router"] = layer.router.detach()
    if layer.q_norm is not None:
        out["q_norm.weight"] = layer.q_norm.detach()
    else:
        unused = getattr(layer, UNUSED_NORM, None)
        out["q_norm.weight"] = (
            unused
            if unused is not None
            else torch.ones(
                layer.n_heads, layer.head_dim, dtype=layer.router.dtype, device=layer.router.device
            )
        )
    return out


def _has_mhffnmoe_layout(module: nn.Module) -> bool:
    names = {n for n, _ in module.named_parameters()}
    if not set(CORE_KEYS) <= names:
        return False
    return names - set(CORE_KEYS) <= set(PROJ_KEYS) | set(BIAS_KEYS)


def patch_model(model: nn.Module, backend: str = "auto") -> int:
    """Replace every submodule with the authors' FFN parameter layout (found by its
    parameter names, whatever its class) by an equivalent mhfgen.FlashMHF holding the
    same values (load_mhffnmoe_layer, with the module's own `.config`); returns how many
    it replaced. Patch before making an optimizer: the new layer's parameters are new
    Parameter objects. ValueError for a matching module without a usable `.config`."""
    replaced = 0
    done: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(p + ".") for p in done):
            continue
        if isinstance(module, FlashMHF) or not _has_mhffnmoe_layout(module):
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise ValueError(
                f"{name} ({type(module).__name__}) has the mhffnmoe FFN "
                f"parameters but no .config to read its sizes from"
            )
        try:
            layer = load_mhffnmoe_layer(dict(module.state_dict()), config, backend=backend)
        except ValueError as exc:
            raise ValueError(f"{name} ({type(module).__name__}): {exc}") from exc
        layer.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        done.append(name)
        replaced += 1
    log.debug("patched %d mhffnmoe FFN layers onto mhfgen.FlashMHF", replaced)
    return replaced


def flashmhf_llama(
    llama_config,
    n_heads: int,
    n_experts: int,
    n_kv_heads: int | None = None,
    qk_norm: bool = True,
    backend: str = "auto",
):
    """A transformers.LlamaForCausalLM whose every decoder layer's `mlp` is an
    mhfgen.FlashMHF(hidden_size, n_heads, intermediate_size, n_experts, n_kv_heads) of the
    config's sizes (bias = mlp_bias), the FFN the paper trained in place of SwiGLU.

    The FlashMHF settings are written into the config (config.flashmhf), so that
    `model.save_pretrained(path)` and load_flashmhf_llama(path) round-trip the model. The
    SwiGLU MLPs are never allocated (the model is built with a 1-wide intermediate size,
    then given the FlashMHF layers and its real config back)."""
    from transformers import LlamaForCausalLM

    settings = dict(n_heads=n_heads, n_experts=n_experts, n_kv_heads=n_kv_heads, qk_norm=qk_norm)
    config = copy.deepcopy(llama_config)
    intermediate = config.intermediate_size
    FlashMHF(
        config.hidden_size, n_heads, intermediate, n_experts, n_kv_heads, device="meta"
    )  # the sizes' checks, before building anything
    config.intermediate_size = 1
    model = LlamaForCausalLM(config)
    config.intermediate_size = intermediate  # the same object every submodule holds
    setattr(config, LLAMA_CONFIG_KEY, settings)
    weight = model.get_input_embeddings().weight
    for layer in model.model.layers:
        layer.mlp = FlashMHF(
            config.hidden_size,
            n_heads,
            intermediate,
            n_experts,
            n_kv_heads,
            qk_norm=qk_norm,
            bias=bool(getattr(config, "mlp_bias", False)),
            backend=backend,
            device=weight.device,
            dtype=weight.dtype,
        )
    return model


def load_flashmhf_llama(path: str | Path, backend: str = "auto"):
    """The model that flashmhf_llama(...).save_pretrained(path) wrote, bit for bit
    (safetensors, one file or sharded)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    path = Path(path)
    config = LlamaConfig.from_pretrained(path)
    settings = getattr(config, LLAMA_CONFIG_KEY, None)
    if not isinstance(settings, dict):
        raise ValueError(
            f"{path}: its config.json has no '{LLAMA_CONFIG_KEY}' entry; "
            f"it was not written by a flashmhf_llama model"
        )
    model = flashmhf_llama(config, backend=backend, **settings)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{path}: no model.safetensors (or its index) to load")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}: the checkpoint does not match the model: missing "
            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    if tied:
        model.tie_weights()
    return model
