"""flash_mhf_bwd_dkv: the Triton-language dK/dU/dV backward
(flash_mhf_bwd_dkv.py.jinja). A program owns one BLOCK_N weight tile of one kv
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

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher (check, allocate, launch: a plan per call signature) and registry entry;
its template and search space sit beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor

from ..codegen import load_kernel
from ..kernels.buffers import weights_need_copy
from ..kernels.configs import checked_call, resolve_config
from ..kernels.grad_plans import DkvPlan, run_dkv_plan
from ..kernels.launch import DirectLaunch
from ..kernels.plans import CachedLaunch
from ..registry import register
from ..spec import INTERPRETER, KernelSpec
from ..tiling import intermediate_blocks, pow2_ceil
from . import _triton
from ._triton import TileConfig

KERNEL = "flash_mhf_bwd_dkv"


def flash_mhf_bwd_dkv(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, Tensor, Tensor]:
    """(dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D).

    Each (Hkv, E, De, D), contiguous, in k's dtype. With token_splits = S > 1 the tokens
    are split over S programs per weight tile, whose fp32 partials meet by atomic adds in
    a zeroed fp32 buffer (the outputs themselves when the dtype is fp32). With split_grads
    two kernels run: dK and dU, then dV.
    """
    return _launch(q, k, u, v, r, do, config=config)


def _make_plan(q, k, u, v, r, do, config) -> DkvPlan:
    """Check the inputs, choose the config and compile: everything but the launch."""
    tokens, spec, config, copy_do, do_strides = checked_call(q, k, u, v, r, do, config, CHOOSE)
    if tokens == 0:
        return DkvPlan((), False, False, False)
    rows = tokens * spec.group
    per_split, splits = _triton.row_splits(rows, config)
    grid = (intermediate_blocks(spec, config.block_n), spec.kv_heads, splits)
    entries = (f"{KERNEL}_kernel", f"{KERNEL}_dv_kernel") if config.split_grads else (None,)
    kernels = tuple(load_kernel(KERNEL, spec, config, entry) for entry in entries)
    scalars = (*q.stride()[:3], *r.stride(), *do_strides, q.shape[1], rows, per_split)
    meta = _triton.launch_meta(config)
    launches = tuple(DirectLaunch(kernel, grid, scalars, meta) for kernel in kernels)
    return DkvPlan(launches, config.token_splits > 1, weights_need_copy(k, u, v), copy_do)


#: the config a call runs with: the given one or the dispatcher's
CHOOSE = partial(resolve_config, KERNEL)
_launch = CachedLaunch(KERNEL, _make_plan, run_dkv_plan)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config(TileConfig):
    """The launch config of flash_mhf_bwd_dkv (fields: see the module doc)."""

    variant = "flash_mhf_bwd_dkv"

    token_splits: int = 1
    transpose_acc: bool = False
    split_grads: bool = False


class FlashMhfBwdDkv(_triton.TritonVariant):
    stem = "flash_mhf_bwd_dkv"
    op = "bwd_dkv"
    Config = Config
    entries = ("flash_mhf_bwd_dkv_kernel", "flash_mhf_bwd_dkv_dv_kernel")
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
        rows = tokens * spec.group
        tiles = _triton.start_tiles(self, spec, rows, narrow_warps=False)
        programs = intermediate_blocks(spec, tiles["block_n"]) * spec.kv_heads
        splits = 1
        if not interp and programs < 2 * sm_count:
            # few weight tiles: split the tokens too, partial sums meet by atomics
            splits = max(1, min(-(-2 * sm_count // programs), rows // (4 * tiles["block_m"])))
        config = Config(**tiles, token_splits=splits, transpose_acc=not interp)
        return _triton.shrink_to_fit(self, spec, config)

    def prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, sm_count: int
    ) -> str | None:
        """The split_grads fault below comes first, but after a block_m too large for the
        rows (the first tile rule)."""
        rows = max(1, tokens) * spec.group
        if (
            config.block_m <= max(16, pow2_ceil(rows))
            and spec.target.startswith("sm9")
            and config.split_grads
            and config.transpose_acc
            and config.num_stages == 1
        ):
            # seen on an H200 with Triton 3.6: an illegal memory access at
            # block_n = 32 and block_m = 64 / 128; the interpreter runs it correctly
            return "split_grads with transpose_acc and one stage faults on sm90 (Triton 3.6)"
        return super().prune_reason(spec, config, tokens, sm_count)

    def own_prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, rows: int, sm_count: int
    ) -> str | None:
        programs = intermediate_blocks(spec, config.block_n) * spec.kv_heads
        return _triton.token_split_reason(config, rows, programs, sm_count)


register(FlashMhfBwdDkv())
