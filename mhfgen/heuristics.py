"""The built-in LaunchConfig of every kernel: valid for any spec and shape, used where the
tuning database has nothing better (and as the baseline tuned configs are compared to).
"""
from __future__ import annotations

from .spec import INTERPRETER, KernelSpec, LaunchConfig


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


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


def default_config(kernel: str, spec: KernelSpec, tokens: int, sm_count: int) -> LaunchConfig:
    """The heuristic config of `kernel` for `spec` at `tokens` tokens on a GPU of
    `sm_count` multiprocessors (any positive number for the interpreter)."""
    interp = spec.target == INTERPRETER
    big_d = spec.head_dim > 128
    if interp:
        bm, bn, warps, stages = 32, 32, 4, 1
    elif big_d:
        bm, bn, warps, stages = 64, 32, 4, 2
    else:
        bm, bn, warps, stages = 128, 64, 8, 3
    bn = pick_block_n(spec.expert_dim, bn)
    if kernel == "flash_mhf_fwd":
        heads = spec.group
        rows = tokens * heads
        bm = rows_block(rows, bm)
        programs = -(-rows // bm) * (spec.heads // heads)
        tiles = -(-spec.intermediate // bn) if spec.expert_dim % bn == 0 else spec.experts
        splits = 1
        if not interp and programs < sm_count:
            splits = max(1, min(tiles, -(-2 * sm_count // programs)))
        return LaunchConfig(block_m=bm, block_n=bn, num_warps=4 if bm < 64 else warps,
                            num_stages=stages, group_heads=heads, inter_splits=splits)
    if kernel == "flash_mhf_bwd_dq":
        heads = spec.group
        bm = rows_block(tokens * heads, 64 if not interp else bm)
        return LaunchConfig(block_m=bm, block_n=bn, num_warps=4 if bm < 64 else warps,
                            num_stages=min(stages, 2), group_heads=heads)
    if kernel == "flash_mhf_bwd_dkv":
        rows = tokens * spec.group
        bm = rows_block(rows, 64 if not interp else bm)
        n_blocks = (spec.intermediate // bn if spec.expert_dim % bn == 0
                    else spec.experts * -(-spec.expert_dim // bn))
        programs = n_blocks * spec.kv_heads
        splits = 1
        if not interp and programs < 2 * sm_count:
            splits = max(1, min(-(-2 * sm_count // programs), rows // (4 * bm)))
        return LaunchConfig(block_m=bm, block_n=bn, num_warps=warps, num_stages=min(stages, 2),
                            token_splits=splits)
    raise ValueError(f"unknown kernel {kernel!r}")
