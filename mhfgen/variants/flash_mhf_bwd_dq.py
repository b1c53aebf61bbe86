"""flash_mhf_bwd_dq: the Triton-language dQ/dR backward (templates/flash_mhf_bwd_dq.py.jinja).

Config fields beyond the tiles (mhfgen.variants._triton): group_heads, tma and
warp_specialize, as the forward's (mhfgen.variants.flash_mhf_fwd).

Shared memory (fitted to Triton 3.6 on sm90; docs/PERFORMANCE.md), Dp and b as the forward's:
    (num_stages * 3 * BLOCK_N + 2 * BLOCK_M) * Dp * b    (K/U/V ring + q, dO)
    + 2 * BLOCK_M * BLOCK_N * b in fp32 (IEEE dots stage dS and dA; measured: 128/64, one
    stage, D = 128 needs 262144 bytes, the base formula gives 230400) + 1 KiB.
Registers: (BM*Dp + 3*BM*BN) / (32 * num_warps) (the dq accumulator, S, A and dP tiles).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Variant, register
from ..spec import INTERPRETER, KernelSpec
from . import _triton
from ._triton import TileConfig


@dataclass(frozen=True)
class Config(TileConfig):
    """The launch config of flash_mhf_bwd_dq (fields: see the module doc)."""

    variant = "flash_mhf_bwd_dq"

    group_heads: int = 1
    tma: bool = False
    warp_specialize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _triton.check_positive(self, "group_heads")
        _triton.check_flags(self, "tma", "warp_specialize")

    def check_for(self, spec: KernelSpec) -> None:
        _triton.check_group_and_tma(self, spec)


class FlashMhfBwdDq(Variant):
    stem = "flash_mhf_bwd_dq"
    op = "bwd_dq"
    family = "triton"
    Config = Config
    launcher = "mhfgen.kernels.flash_mhf_bwd_dq:flash_mhf_bwd_dq"
    shared_templates = ("_macros.jinja",)
    preference = 50
    schema2_kernel = "flash_mhf_bwd_dq"
    flop_factor = 10  # S, A, dP recomputed; dQ from dS and dA
    outputs = ("dq", "dr")
    takes_grad = True
    gpu_start = (128, 64, 8, 3)

    def static_params(self, spec: KernelSpec, config: Config) -> dict:
        params = _triton.tile_params(spec, config)
        params.update(
            group_heads=config.group_heads,
            tma=config.tma,
            warp_specialize=config.warp_specialize and params["even_de"],
        )
        return params

    def shared_memory(self, spec: KernelSpec, config: Config) -> int:
        dp = _triton.padded_head_dim(spec, config)
        bm, bn, st = config.block_m, config.block_n, config.num_stages
        elems = (st * 3 * bn + 2 * bm) * dp + (2 * bm * bn if spec.dtype == "float32" else 0)
        return elems * spec.torch_dtype.itemsize + 1024

    def registers(self, spec: KernelSpec, config: Config) -> float:
        bm, bn, dp = config.block_m, config.block_n, _triton.padded_head_dim(spec, config)
        return (bm * dp + 3 * bm * bn) / (32 * config.num_warps)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> Config:
        interp = spec.target == INTERPRETER
        bm, bn, warps, stages = _triton.INTERPRETER_START if interp else self.gpu_start
        bn = _triton.pick_block_n(spec.expert_dim, bn)
        heads = spec.group
        bm = _triton.rows_block(tokens * heads, bm)
        config = Config(
            block_m=bm,
            block_n=bn,
            num_warps=4 if bm < 64 else warps,
            num_stages=stages,
            group_heads=heads,
        )
        return config if interp else _triton.shrink_to_fit(self, spec, config)

    def prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, sm_count: int
    ) -> str | None:
        reason = _triton.tile_prune_reason(spec, config, max(1, tokens) * config.group_heads)
        if reason:
            return reason
        if config.warp_specialize and spec.expert_dim % config.block_n:
            return "warp_specialize applies only when block_n divides expert_dim"
        return None


register(FlashMhfBwdDq())
