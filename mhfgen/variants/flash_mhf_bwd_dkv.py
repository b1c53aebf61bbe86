"""flash_mhf_bwd_dkv: the Triton-language dK/dU/dV backward
(templates/flash_mhf_bwd_dkv.py.jinja). A program owns one BLOCK_N weight tile of one kv
head and walks every query head of its group over the tokens.

Config fields beyond the tiles (mhfgen.variants._triton):
    token_splits:  programs that split the tokens, partials reduced with fp32 atomics.
    transpose_acc: accumulate dK^T (D x BLOCK_N) from row-major tiles, so head_dim rather
                   than BLOCK_N is the M dimension of the gradient MMAs.
    split_grads:   two kernels, dK and dU in one, dV in the other, each with fewer live
                   accumulators (S and A are computed in both).

Shared memory (fitted to Triton 3.6 on sm90; docs/PERFORMANCE.md), Dp and b as the forward's:
    (3 * BLOCK_N + num_stages * 2 * BLOCK_M) * Dp * b    (q/dO ring + K/U/V)
    + 3 * BLOCK_M * BLOCK_N * b with transpose_acc (P, dS, dA are the MMAs' B operands,
    staged in shared memory) + 1 KiB.
Registers: (3*BN*Dp + 3*BM*BN) / (32 * num_warps) (dk/du/dv accumulators, S, A, dP tiles;
2*BN*Dp with split_grads: the dK+dU kernel holds two accumulators).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Variant, register
from ..spec import INTERPRETER, KernelSpec
from ..tiling import cdiv, intermediate_blocks
from . import _triton
from ._triton import TileConfig

#: programs per multiprocessor above which a split only adds partial-sum traffic
MAX_PROGRAMS_PER_SM = 8


@dataclass(frozen=True)
class Config(TileConfig):
    """The launch config of flash_mhf_bwd_dkv (fields: see the module doc)."""

    variant = "flash_mhf_bwd_dkv"

    token_splits: int = 1
    transpose_acc: bool = False
    split_grads: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _triton.check_positive(self, "token_splits")
        _triton.check_flags(self, "transpose_acc", "split_grads")


class FlashMhfBwdDkv(Variant):
    stem = "flash_mhf_bwd_dkv"
    op = "bwd_dkv"
    family = "triton"
    Config = Config
    launcher = "mhfgen.kernels.flash_mhf_bwd_dkv:flash_mhf_bwd_dkv"
    entries = ("flash_mhf_bwd_dkv_kernel", "flash_mhf_bwd_dkv_dv_kernel")
    shared_templates = ("_macros.jinja",)
    preference = 50
    schema2_kernel = "flash_mhf_bwd_dkv"
    flop_factor = 12  # S^T, A^T, dP^T recomputed, then dV, dK, dU
    outputs = ("dk", "du", "dv")
    takes_grad = True
    gpu_start = (128, 64, 8, 2)  # with transpose_acc

    def static_params(self, spec: KernelSpec, config: Config) -> dict:
        params = _triton.tile_params(spec, config)
        params.update(
            token_split=config.token_splits > 1,
            transpose_acc=config.transpose_acc,
            split_grads=config.split_grads,
        )
        return params

    def shared_memory(self, spec: KernelSpec, config: Config) -> int:
        dp = _triton.padded_head_dim(spec, config)
        bm, bn, st = config.block_m, config.block_n, config.num_stages
        elems = (3 * bn + st * 2 * bm) * dp + (3 * bm * bn if config.transpose_acc else 0)
        return elems * spec.torch_dtype.itemsize + 1024

    def registers(self, spec: KernelSpec, config: Config) -> float:
        bm, bn, dp = config.block_m, config.block_n, _triton.padded_head_dim(spec, config)
        return ((2 if config.split_grads else 3) * bn * dp + 3 * bm * bn) / (32 * config.num_warps)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> Config:
        """transpose_acc on a GPU; token_splits when the weight tiles fill fewer than two
        waves of programs."""
        interp = spec.target == INTERPRETER
        bm, bn, warps, stages = _triton.INTERPRETER_START if interp else self.gpu_start
        bn = _triton.pick_block_n(spec.expert_dim, bn)
        rows = tokens * spec.group
        bm = _triton.rows_block(rows, bm)
        programs = intermediate_blocks(spec, bn) * spec.kv_heads
        splits = 1
        if not interp and programs < 2 * sm_count:
            # few weight tiles: split the tokens too, partial sums meet by atomics
            splits = max(1, min(-(-2 * sm_count // programs), rows // (4 * bm)))
        config = Config(
            block_m=bm,
            block_n=bn,
            num_warps=warps,
            num_stages=stages,
            token_splits=splits,
            transpose_acc=not interp,
        )
        return config if interp else _triton.shrink_to_fit(self, spec, config)

    def prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, sm_count: int
    ) -> str | None:
        rows = max(1, tokens) * spec.group
        if config.block_m > max(16, _triton.pow2_ceil(rows)):
            return f"block_m={config.block_m} is larger than the {rows} rows"
        if (
            spec.target.startswith("sm9")
            and config.split_grads
            and config.transpose_acc
            and config.num_stages == 1
        ):
            # seen on an H200 with Triton 3.6: an illegal memory access at
            # block_n = 32 and block_m = 64 / 128; the interpreter runs it correctly
            return "split_grads with transpose_acc and one stage faults on sm90 (Triton 3.6)"
        reason = _triton.tile_prune_reason(spec, config, rows)
        if reason:
            return reason
        if config.token_splits > 1:
            budget = MAX_PROGRAMS_PER_SM * max(1, sm_count)
            if config.token_splits > cdiv(rows, config.block_m):
                return f"token_splits={config.token_splits} exceeds the row blocks"
            programs = intermediate_blocks(spec, config.block_n) * spec.kv_heads
            if programs * config.token_splits > budget:
                return f"token_splits={config.token_splits} makes more than {budget} programs"
        return None


register(FlashMhfBwdDkv())
