"""A small Llama-style causal language model whose FFN is FlashMHF or SwiGLU.

Pre-norm decoder blocks: x + Attention(RMSNorm(x)), then x + FFN(RMSNorm(x)). Attention is
multi-head with rotary position embeddings, through
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)`. Embedding and output
head are untied (vocabulary 256: they are a small share of the parameters either way).

Parameter matching (docs/TRAINING.md): both models share d_model, layer count and attention;
only the FFN differs. A FlashMHF layer holds 2 d^2 + 3 d I + d E + H D parameters (in/out
projections, K/U/V, router, per-head norm of Q), a SwiGLU layer 3 d I_s. The SwiGLU width
I_s is chosen so the two are equal (`matched_swiglu_intermediate`); then I_s ~ I + 2 d / 3
and the FFN FLOPs per token match as well (6 d I_s ~ 6 d I + 4 d^2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import FlashMHF, SwiGLU
from .data import VOCAB_SIZE

FFN_KINDS = ("flashmhf", "swiglu")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the model. mhf_* configure FlashMHF; swiglu_intermediate is the SwiGLU width
    (None: matched to the FlashMHF layer's parameter count)."""

    ffn: str = "flashmhf"
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8  # attention heads
    mhf_heads: int = 4  # FlashMHF heads, head_dim = d_model / mhf_heads
    mhf_intermediate: int = 1280
    mhf_experts: int = 5
    mhf_qk_norm: bool = True
    swiglu_intermediate: int | None = None
    backend: str = "auto"  # FlashMHF backend: auto | triton | torch
    max_seq_len: int = 2048
    rope_base: float = 10000.0
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an "
                f"even integer (rotary embeddings rotate pairs)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def flashmhf_layer_params(
    d_model: int, heads: int, intermediate: int, experts: int, qk_norm: bool = True
) -> int:
    """Parameters of one bias-free FlashMHF layer: 2 d^2 + 3 d I + d E (+ d for the norm)."""
    return (
        2 * d_model * d_model
        + 3 * d_model * intermediate
        + d_model * experts
        + (d_model if qk_norm else 0)
    )


def matched_swiglu_intermediate(cfg: ModelConfig, multiple: int = 8) -> int:
    """The SwiGLU width (a multiple of `multiple`) whose 3 d I_s parameters come nearest to
    one FlashMHF layer of `cfg`."""
    target = flashmhf_layer_params(
        cfg.d_model, cfg.mhf_heads, cfg.mhf_intermediate, cfg.mhf_experts, cfg.mhf_qk_norm
    )
    return max(multiple, round(target / (3 * cfg.d_model) / multiple) * multiple)


def build_ffn(cfg: ModelConfig) -> nn.Module:
    """The FFN of one block: FlashMHF or SwiGLU, with the layer's own initialisation."""
    if cfg.ffn == "flashmhf":
        sizes = (cfg.d_model, cfg.mhf_heads, cfg.mhf_intermediate, cfg.mhf_experts)
        return FlashMHF(*sizes, qk_norm=cfg.mhf_qk_norm, backend=cfg.backend)
    width = cfg.swiglu_intermediate or matched_swiglu_intermediate(cfg)
    return SwiGLU(cfg.d_model, width)


def rotary_tables(
    head_dim: int, max_seq_len: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (max_seq_len, head_dim) for rotate-half rotary embeddings."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, L, hd) by position: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary embeddings, no biases."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(B, L, d))


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.ffn = build_ffn(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class CausalLM(nn.Module):
    """Byte-level decoder: embedding, n_layers Blocks, final RMSNorm, linear head.

    forward(tokens (B, L) int64, targets (B, L) or None) -> (logits (B, L, V), mean
    cross-entropy loss or None).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # NOTE: embedding, attention and head take normal(0, 0.02) (Llama/GPT-2 style); the
        # FFNs keep their own module initialisation (FlashMHF: the paper's).
        for name, module in self.named_modules():
            if isinstance(module, (nn.Embedding, nn.Linear)) and ".ffn." not in f".{name}.":
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        L = tokens.shape[1]
        if L > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {L} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:L], self.rope_sin[:L]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total, in the FFNs, and the rest."""
    total = sum(p.numel() for p in model.parameters())
    ffn = sum(p.numel() for name, p in model.named_parameters() if ".ffn." in f".{name}")
    return {"total": total, "ffn": ffn, "other": total - ffn}
