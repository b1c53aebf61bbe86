"""nn.Modules: FlashMHF (the multi-head FFN layer) and SwiGLU (the baseline FFN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import reference
from .norm_router import norm_router
from .validation import check_layer_sizes

BACKENDS = ("auto", "triton", "torch")


def _local(t: torch.Tensor | None) -> torch.Tensor | None:
    """A head-sharded DTensor parameter (mhfgen.parallel) as this rank's shard; any other
    tensor as it is. Differentiable: the shard's gradient comes back as a DTensor."""
    # NOTE: not imported here: importing torch.distributed.tensor takes about a second, and
    # no DTensor exists before something else imported it (the attribute appears then)
    dtensor = getattr(torch.distributed, "tensor", None)
    if dtensor is not None and isinstance(t, dtensor.DTensor):
        return t.to_local()
    return t


class FlashMHF(nn.Module):
    """Flash Multi-Head FFN (docs/CONTRACTS.md, section 1).

    y = O.view(B, L, d) W_out^T, O = flash_mhf(Q, K, U, V, R), Q = (x W_in^T).view(B, L, H, D)
    (optionally RMS-normalised per head), R = sigmoid(Q W_R) normalised to sum 1 over the
    E experts. Parameters: in_proj/out_proj (d, d), router (H, D, E), key/up/value
    (Hkv, E, De, D) with De = intermediate_size / n_experts, q_norm (H, D) if qk_norm.
    The norm (rstd = 1 / sqrt(mean_d(Q^2) + norm_eps)) and the router run in fp32 with an
    analytic backward that keeps only Q in its own dtype (mhfgen.norm_router).
    projections=False drops in_proj and out_proj (Q = x, y = O), the layout of checkpoints
    trained without them (mhfgen.integrations.transformers).

    backend: "auto" (generated Triton kernels on CUDA, the PyTorch reference elsewhere),
    "triton" (kernels; CPU tensors go through Triton's interpreter, in fp32 or fp16: bf16
    there, autocast included, is a TypeError rather than a wrong answer), "torch"
    (reference).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        intermediate_size: int,
        n_experts: int,
        n_kv_heads: int | None = None,
        qk_norm: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device=None,
        dtype=None,
        norm_eps: float = 1e-5,
        projections: bool = True,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_layer_sizes(d_model, n_heads, intermediate_size, n_experts, n_kv_heads)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if (
            not isinstance(norm_eps, (int, float))
            or isinstance(norm_eps, bool)
            or not 0 < norm_eps < 1
        ):
            raise ValueError(f"norm_eps must be a float in (0, 1), got {norm_eps!r}")
        self.norm_eps = float(norm_eps)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.intermediate_size, self.n_experts = intermediate_size, n_experts
        self.expert_dim = intermediate_size // n_experts
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, d_model, bias=bias, **factory) if projections else None
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory) if projections else None
        self.router = nn.Parameter(torch.empty(n_heads, self.head_dim, n_experts, **factory))
        weight_shape = (n_kv_heads, n_experts, self.expert_dim, self.head_dim)
        self.key = nn.Parameter(torch.empty(weight_shape, **factory))
        self.up = nn.Parameter(torch.empty(weight_shape, **factory))
        self.value = nn.Parameter(torch.empty(weight_shape, **factory))
        self.q_norm = (
            nn.Parameter(torch.ones(n_heads, self.head_dim, **factory)) if qk_norm else None
        )
        self.reset_parameters()

    #: how K, U and V are stored: "dense" (the parameters key, up, value) or "fp8_e4m3"
    #: (buffers key_fp8, up_fp8, value_fp8 and expert_scales after quantize_fp8_)
    weight_format = "dense"
    EXPERT_WEIGHTS = ("key", "up", "value")

    def quantize_fp8_(self) -> FlashMHF:
        """Store K, U and V in FP8 (e4m3), one float32 scale per (kv head, expert, row)
        (mhfgen.fp8: formula and error bound), in place; returns the layer.

        The parameters key, up and value become buffers key_fp8, up_fp8, value_fp8
        (float8_e4m3fn) and expert_scales (3, Hkv, E, De) float32, the form the FP8 kernels
        read (a state dict saved after this loads into a layer on which quantize_fp8_ was
        called). For serving: the FP8 weights take no gradient. The forward runs
        mhfgen.flash_mhf_fp8 (1 byte per weight read) where that pays
        (mhfgen.ops.fp8_forward_pays: the kernels run, no gradient is wanted, and the
        16-bit forward would be the same Triton-language schedule, as at decode sizes),
        and dequantises to the activations' dtype elsewhere (prefill sizes on Hopper,
        where the Gluon forward on 16-bit weights is faster; the reference backend;
        autograd through q; a GPU before sm89). Calling it again does nothing; a
        head-sharded layer (mhfgen.parallel) is refused."""
        if self.weight_format == "fp8_e4m3":
            return self
        from .fp8 import quantize_experts

        for name in self.EXPERT_WEIGHTS:
            if _local(getattr(self, name)) is not getattr(self, name):
                raise ValueError("quantize_fp8_ takes a layer that is not sharded by heads")
        *data, scales = quantize_experts(*(getattr(self, n) for n in self.EXPERT_WEIGHTS))
        for name, weight in zip(self.EXPERT_WEIGHTS, data):
            delattr(self, name)
            self.register_parameter(name, None)
            self.register_buffer(f"{name}_fp8", weight)
        self.register_buffer("expert_scales", scales)
        self.weight_format = "fp8_e4m3"
        return self

    def fp8_weights(self) -> tuple[torch.Tensor, ...]:
        """(k8, u8, v8, scales) of a layer after quantize_fp8_, as
        mhfgen.flash_mhf_fp8(q, k8, u8, v8, r, scales) takes them."""
        if self.weight_format != "fp8_e4m3":
            raise ValueError("fp8_weights: the layer's weights are not FP8 (quantize_fp8_)")
        return (*(getattr(self, f"{n}_fp8") for n in self.EXPERT_WEIGHTS), self.expert_scales)

    def expert_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """K, U and V in `dtype` as the core op takes them: the parameters (this rank's
        shard where sharded by heads), or the FP8 weights dequantised."""
        if self.weight_format == "fp8_e4m3":
            from .fp8 import dequantize_experts

            return dequantize_experts(*self.fp8_weights(), dtype)
        return tuple(_local(getattr(self, n)).to(dtype) for n in self.EXPERT_WEIGHTS)

    def reset_parameters(self) -> None:
        """The paper's initialisation: xavier-uniform (gain 0.707) projections, normal(0, 0.02)
        K/U/V, truncated normal(0, 0.02) router, zero biases, unit norm weight."""
        if self.weight_format != "dense":
            raise ValueError("reset_parameters: K, U and V are stored in FP8; build a new layer")
        for proj in (self.in_proj, self.out_proj):
            if proj is None:
                continue
            nn.init.xavier_uniform_(proj.weight, gain=0.707)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        for w in (self.key, self.up, self.value):
            nn.init.normal_(w, mean=0.0, std=0.02)
        nn.init.trunc_normal_(self.router, mean=0.0, std=0.02, a=-0.04, b=0.04)
        if self.q_norm is not None:
            nn.init.ones_(self.q_norm)

    def _use_kernels(self, x: torch.Tensor) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "triton":
            return True
        return x.is_cuda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, L, d_model={self.d_model}), got {shape}")
        B, L, _ = x.shape
        q = self.in_proj(x) if self.in_proj is not None else x
        # all n_heads, or this rank's heads when mhfgen.parallel shards the layer by heads
        # (then in_proj yields the local columns and the per-head weights are DTensors)
        heads = q.shape[-1] // self.head_dim
        q = q.reshape(B, L, heads, self.head_dim)
        # RMSNorm and router in fp32, saving only q for an analytic backward: autograd of
        # the plain form would keep several fp32 copies of Q (mhfgen.norm_router); fused
        # Triton kernels with the core's kernels, PyTorch with the reference core
        q, r = norm_router(
            q,
            _local(self.q_norm),
            _local(self.router),
            use_kernels=self._use_kernels(x),
            eps=self.norm_eps,
        )
        # under autocast q comes out of in_proj in the autocast dtype: the core runs in it
        if self._use_kernels(x):
            # imported lazily: the reference path needs no Triton
            from .ops import flash_mhf, flash_mhf_fp8, fp8_forward_pays

            if self.weight_format == "fp8_e4m3" and fp8_forward_pays(q, self.key_fp8, r):
                k8, u8, v8, scales = self.fp8_weights()
                o = flash_mhf_fp8(q, k8, u8, v8, r, scales)
            else:
                o = flash_mhf(q, *self.expert_weights(q.dtype), r)
        else:
            o = reference.flash_mhf(q, *self.expert_weights(q.dtype), r)
        o = o.reshape(B, L, heads * self.head_dim)
        return self.out_proj(o) if self.out_proj is not None else o

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"intermediate_size={self.intermediate_size}, n_experts={self.n_experts}, "
            f"qk_norm={self.q_norm is not None}, backend={self.backend!r}"
            + (f", norm_eps={self.norm_eps:g}" if self.norm_eps != 1e-5 else "")
            + ("" if self.in_proj is not None else ", projections=False")
            + ("" if self.weight_format == "dense" else f", weights={self.weight_format}")
        )


def quantize_fp8_model(model: nn.Module) -> int:
    """Convert every FlashMHF layer of `model` to FP8 expert weights in place
    (FlashMHF.quantize_fp8_); the number of layers converted (0 where it has none)."""
    layers = [m for m in model.modules() if isinstance(m, FlashMHF)]
    for layer in layers:
        layer.quantize_fp8_()
    return len(layers)


class SwiGLU(nn.Module):
    """The baseline FFN: y = (silu(x W_gate^T) * (x W_up^T)) W_down^T, 6 d I FLOPs per token,
    the same as FlashMHF's core at equal d_model and intermediate_size."""

    def __init__(
        self, d_model: int, intermediate_size: int, bias: bool = False, device=None, dtype=None
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("intermediate_size", intermediate_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.intermediate_size = d_model, intermediate_size
        self.gate_proj = nn.Linear(d_model, intermediate_size, bias=bias, **factory)
        self.up_proj = nn.Linear(d_model, intermediate_size, bias=bias, **factory)
        self.down_proj = nn.Linear(intermediate_size, d_model, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for proj in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.xavier_uniform_(proj.weight, gain=0.707)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, intermediate_size={self.intermediate_size}"
