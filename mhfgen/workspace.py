"""The fp32 workspace of the one-pass backward (op `bwd`) and its budget, for each of its
variants (mhfgen.variants.flash_mhf_bwd_fused, flash_mhf_bwd_ws, flash_mhf_bwdt_ws) and
their launchers (mhfgen.kernels.bwd_chunks).

dq is a sum over the I / BLOCK_N programs of a kv head: its partial sums meet by fp32
atomics in a workspace of one launch's query heads (the config's `head_chunk` kv heads), so
the workspace is tokens * head_chunk * (H / Hkv) * D floats; dr's partial sums need one
where an expert spans several tiles and r is not fp32, and dK/dU/dV's where the tokens are
split. A config is read only for its `head_chunk`, `token_splits` and `block_n` (and
`dr_rows` where it has one).
"""

from __future__ import annotations

import dataclasses

from .spec import KernelSpec
from .tiling import cdiv

#: the dq workspace may take up to this fraction of dq's own size (at least one kv head):
#: at the 1.3B preset and 16384 tokens one kv head, 8 MiB, so that forward + backward
#: stays within a fifth of a SwiGLU layer's peak memory
SCRATCH_FRACTION = 1 / 8
#: workspaces up to this many bytes are always allowed (small problems)
SCRATCH_FLOOR = 4 << 20


def kv_heads_per_launch(spec: KernelSpec, config) -> int:
    """The kv heads one launch covers: head_chunk, at most all of them."""
    return min(config.head_chunk, spec.kv_heads)


def dr_atomic(spec: KernelSpec, config) -> bool:
    """Whether an expert spans several of the row blocks whose dr partial sums the kernel
    writes (`dr_rows`, where the config has it: rows per warpgroup; else block_n, rows per
    program), so they meet by atomics."""
    return cdiv(spec.expert_dim, getattr(config, "dr_rows", config.block_n)) > 1


def workspace_bytes(spec: KernelSpec, config, tokens: int, r_fp32: bool = True) -> int:
    """Bytes of fp32 workspace one call allocates beside its outputs: dq's partial sums
    (none in fp32, where they go to dq itself), dr's where r is not fp32 and an expert
    spans tiles, and dK/dU/dV's with token splits (none in fp32)."""
    n = kv_heads_per_launch(spec, config)
    narrow = spec.dtype != "float32"
    total = tokens * n * spec.group * spec.head_dim * 4 if narrow else 0
    if dr_atomic(spec, config) and not r_fp32:
        total += tokens * n * spec.group * spec.experts * 4
    if config.token_splits > 1 and narrow:
        total += 3 * n * spec.intermediate * spec.head_dim * 4
    return total


def workspace_budget(spec: KernelSpec, tokens: int) -> int:
    """The workspace a config may use: SCRATCH_FRACTION of dq's bytes, at least
    SCRATCH_FLOOR and at least one kv head's dq partial sums."""
    dq_bytes = tokens * spec.heads * spec.head_dim * spec.torch_dtype.itemsize
    one_head = tokens * spec.group * spec.head_dim * 4
    return max(int(dq_bytes * SCRATCH_FRACTION), SCRATCH_FLOOR, one_head)


def fit_launches(spec: KernelSpec, config, tokens: int, sm_count: int, tiles: int, max_splits: int):
    """`config` with the heuristic's launch shape: the widest head_chunk (all kv heads,
    halved until the workspace fits the budget), then token splits where one launch's
    programs (`tiles` weight tiles per kv head x head_chunk) fill fewer than two waves of
    `sm_count` multiprocessors, at most `max_splits`, kept only where the workspace still
    fits."""
    tokens = max(1, tokens)
    budget = workspace_budget(spec, tokens)
    chunk = spec.kv_heads
    config = dataclasses.replace(config, head_chunk=chunk, token_splits=1)
    while chunk > 1 and workspace_bytes(spec, config, tokens) > budget:
        chunk = (chunk + 1) // 2
        config = dataclasses.replace(config, head_chunk=chunk)
    programs = tiles * chunk
    if programs < 2 * sm_count:
        splits = max(1, min(-(-2 * sm_count // programs), max_splits))
        split = dataclasses.replace(config, token_splits=splits)
        if splits > 1 and workspace_bytes(spec, split, tokens) <= budget:
            config = split
    return config


def launch_problems(spec: KernelSpec, config, tokens: int) -> list[str]:
    """What rules a one-pass config out for a call of `tokens` tokens: more kv heads per
    launch than the spec has, or a workspace over its budget."""
    problems = []
    if config.head_chunk > spec.kv_heads:
        problems.append(f"head_chunk={config.head_chunk} exceeds the {spec.kv_heads} kv heads")
    used, budget = (
        workspace_bytes(spec, config, max(1, tokens)),
        workspace_budget(spec, max(1, tokens)),
    )
    if used > budget:
        problems.append(
            f"a {used >> 20} MiB workspace exceeds the budget of {budget >> 20} MiB "
            f"({SCRATCH_FRACTION:g} of dq)"
        )
    return problems
