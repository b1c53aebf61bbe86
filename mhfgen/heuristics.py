"""The built-in LaunchConfig of every kernel: valid for any spec and shape, used where the
tuning database has nothing better (and the baseline tuned configs are compared with).

Starting points per kernel come from a sweep on an H200 (bf16, 1.3B shape, 16384 tokens;
docs/PERFORMANCE.md); they shrink (pipeline depth, then tile sizes) until the shared
memory estimate of mhfgen.resources fits the target.
"""
from __future__ import annotations

import dataclasses

from .resources import fits
from .spec import INTERPRETER, KernelSpec, LaunchConfig

#: kernel -> (block_m, block_n, num_warps, num_stages) on a GPU
GPU_START = {
    "flash_mhf_fwd": (128, 64, 8, 3),
    "flash_mhf_bwd_dq": (128, 64, 8, 3),
    "flash_mhf_bwd_dkv": (128, 64, 8, 2),  # with transpose_acc
}
INTERPRETER_START = (32, 32, 4, 1)


def _pow2_ceil(x: int) -> int:
    return 1 << (max(1, x) - 1).bit_length()


def pick_block_n(expert_dim: int, preferred: int) -> int:
    """A tile width for the intermediate dimension: `preferred` when it divides De (one
    flat loop, no masks), else the widest divisor >= 32 below it, else the power of two
    that wastes least on the masked last tile of each expert."""
    for bn in (preferred, preferred // 2):
        if bn >= 16 and expert_dim % bn == 0:
            return bn
    candidates = [bn for bn in (16, 32, 64, 128) if bn <= max(preferred, 16)]
    return min(candidates, key=lambda bn: (-(-expert_dim // bn) * bn / expert_dim + 16 / bn, -bn))


def rows_block(rows: int, preferred: int) -> int:
    """BLOCK_M: `preferred`, shrunk (to >= 16) when there are fewer rows than that."""
    return max(16, min(preferred, _pow2_ceil(rows)))


def shrink_to_fit(kernel: str, spec: KernelSpec, config: LaunchConfig) -> LaunchConfig:
    """Lower num_stages, then the larger tile dimension, until the config fits."""
    while not fits(kernel, spec, config):
        if config.num_stages > 1:
            config = dataclasses.replace(config, num_stages=config.num_stages - 1)
        elif max(config.block_m, config.block_n) > 16:
            field = "block_m" if config.block_m >= config.block_n else "block_n"
            config = dataclasses.replace(config, **{field: getattr(config, field) // 2})
        else:
            break  # 16 x 16, one stage: nothing smaller exists
    return config


def default_config(kernel: str, spec: KernelSpec, tokens: int, sm_count: int) -> LaunchConfig:
    """The heuristic config of `kernel` for `spec` at `tokens` tokens on a GPU of
    `sm_count` multiprocessors (any positive number for the interpreter)."""
    if kernel not in GPU_START:
        raise ValueError(f"unknown kernel {kernel!r}")
    interp = spec.target == INTERPRETER
    bm, bn, warps, stages = INTERPRETER_START if interp else GPU_START[kernel]
    bn = pick_block_n(spec.expert_dim, bn)
    heads = spec.group
    rows = tokens * heads
    if kernel == "flash_mhf_fwd":
        bm = rows_block(rows, bm)
        programs = -(-rows // bm) * (spec.heads // heads)
        tiles = spec.intermediate // bn if spec.expert_dim % bn == 0 else spec.experts
        splits = 1
        if not interp and 2 * programs <= sm_count:
            # few tokens (decode): split the intermediate dimension to fill the GPU with
            # one wave of programs (a second, partial wave would leave most SMs idle)
            splits = max(1, min(tiles, sm_count // programs))
        config = LaunchConfig(block_m=bm, block_n=bn, num_warps=4 if bm < 64 else warps,
                              num_stages=stages, group_heads=heads, inter_splits=splits)
    elif kernel == "flash_mhf_bwd_dq":
        bm = rows_block(rows, bm)
        config = LaunchConfig(block_m=bm, block_n=bn, num_warps=4 if bm < 64 else warps,
                              num_stages=stages, group_heads=heads)
    else:
        bm = rows_block(rows, bm)
        n_blocks = (spec.intermediate // bn if spec.expert_dim % bn == 0
                    else spec.experts * -(-spec.expert_dim // bn))
        programs = n_blocks * spec.kv_heads
        splits = 1
        if not interp and programs < 2 * sm_count:
            # few weight tiles: split the tokens too, partial sums meet by atomics
            splits = max(1, min(-(-2 * sm_count // programs), rows // (4 * bm)))
        config = LaunchConfig(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages,
                              token_splits=splits, transpose_acc=not interp)
    return config if interp else shrink_to_fit(kernel, spec, config)
