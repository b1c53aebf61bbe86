"""The one shape-bucketing function of mhfgen, shared by the tuner and the dispatcher.

A call's shape, for tuning purposes, is its token count T = B * L (everything else is in
the KernelSpec). Tuned configs are stored per bucket of T:

    bucket(T) = T                              for 0 <= T <= 64 (decode: each its own bucket)
    bucket(T) = 2 ** ceil(log2(T))             for T > 64 (65..128 -> 128, 16384 -> 16384)

so a config tuned at 12000 tokens serves every call of 8193..16384 tokens. Small token
counts get exact buckets because there the grid of programs, and so the best split of the
work (inter_splits, token_splits, BLOCK_M), changes with every token.
"""

from __future__ import annotations

import math

#: token counts up to this are their own bucket
DECODE_TOKENS = 64


def shape_bucket(tokens: int) -> int:
    """The bucket of a call with `tokens` tokens (see the module docstring)."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"tokens must be a non-negative int, got {tokens!r}")
    if tokens <= DECODE_TOKENS:
        return tokens
    return 1 << (tokens - 1).bit_length()


def bucket_distance(a: int, b: int) -> float:
    """How far apart two token counts are for the 'nearest tuned shape' step of dispatch:
    |log2(a) - log2(b)|, with 0 tokens treated as 1."""
    return abs(math.log2(max(a, 1)) - math.log2(max(b, 1)))
