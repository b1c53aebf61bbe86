"""The central tables of the kernel tests: shapes (odd and degenerate ones included),
launch configs that reach every template branch, and the CPU dtypes.

Triton's interpreter cannot multiply bf16 (its tl.dot reads the raw bits), so CPU tests
use fp32 and fp16; `mhfgen verify` covers bf16 on the GPU.
"""

import torch

from mhfgen.variants import flash_mhf_bwd_dkv as dkv_variant
from mhfgen.variants import flash_mhf_bwd_dq as dq_variant
from mhfgen.variants import flash_mhf_bwd_fused as fused_variant
from mhfgen.variants import flash_mhf_fwd as fwd_variant
from mhfgen.verification import Case

#: the configs of the Triton-language variant of each op of the split training step
Fwd, Dq, Dkv = fwd_variant.Config, dq_variant.Config, dkv_variant.Config
#: those variants' stems (the three kernels of tuning databases of schema 2)
KERNELS = (Fwd.variant, Dq.variant, Dkv.variant)

CASES = [
    Case("base", batch=2, seqlen=8, heads=2, kv_heads=2, head_dim=32, experts=2, expert_dim=32),
    Case("L1", batch=1, seqlen=1, heads=2, kv_heads=2, head_dim=32, experts=2, expert_dim=32),
    Case("L37_gqa", batch=1, seqlen=37, heads=4, kv_heads=2, head_dim=32, experts=2, expert_dim=32),
    Case("D96", batch=1, seqlen=6, heads=2, kv_heads=2, head_dim=96, experts=2, expert_dim=32),
    Case("De80", batch=1, seqlen=6, heads=2, kv_heads=1, head_dim=32, experts=3, expert_dim=80),
    Case("E1", batch=2, seqlen=5, heads=2, kv_heads=2, head_dim=16, experts=1, expert_dim=64),
    Case("D40_gqa3", batch=1, seqlen=7, heads=3, kv_heads=1, head_dim=40, experts=2, expert_dim=48),
]
EMPTY = Case("L0", batch=2, seqlen=0, heads=2, kv_heads=2, head_dim=32, experts=2, expert_dim=32)

DTYPES = [torch.float32, torch.float16]

#: per kernel, configs that together reach every template branch: flat and per-expert
#: (masked) loops, chunked and padded head_dim, grouped heads, split intermediate (fwd),
#: split tokens with atomics (dkv, fused), weights through tensor descriptors (fwd, dq);
#: for the one-pass backward both tile orientations, dr stored (one tile per expert) and
#: summed by atomics, kv heads one launch at a time and all at once.
CONFIGS = {
    "flash_mhf_fwd": [
        Fwd(block_m=16, block_n=16),
        Fwd(block_m=32, block_n=32, head_dim_split="pad", inter_splits=2),
        Fwd(block_m=16, block_n=64, inter_splits=3),
        Fwd(block_m=16, block_n=32, tma=True),
        Fwd(block_m=16, block_n=16, prefetch_scores=True, inter_splits=3),
        Fwd(block_m=32, block_n=16, prefetch_scores=True, tma=True, head_dim_split="pad"),
        Fwd(block_m=16, block_n=16, tma=True, warp_specialize=True),
        # the Helion knobs: an unrolled intermediate loop, K/U/V loads kept in L2
        Fwd(block_m=16, block_n=16, unroll=2, evict_weights=True),
        Fwd(block_m=16, block_n=32, unroll=4, prefetch_scores=True, inter_splits=2),
    ],
    "flash_mhf_bwd_dq": [
        Dq(block_m=16, block_n=16),
        Dq(block_m=32, block_n=64, head_dim_split="pad"),
        Dq(block_m=16, block_n=32, head_dim_split="pad", tma=True),
        Dq(block_m=16, block_n=16, tma=True, warp_specialize=True),
    ],
    "flash_mhf_bwd_dkv": [
        Dkv(block_m=16, block_n=16),
        Dkv(block_m=16, block_n=64, head_dim_split="pad", token_splits=3),
        Dkv(block_m=32, block_n=16, transpose_acc=True),
        Dkv(block_m=16, block_n=32, token_splits=2, transpose_acc=True),
        Dkv(block_m=16, block_n=16, split_grads=True),
        Dkv(
            block_m=32,
            block_n=64,
            token_splits=2,
            transpose_acc=True,
            split_grads=True,
            head_dim_split="pad",
        ),
    ],
    "flash_mhf_bwd_fused": [
        fused_variant.Config(block_m=16, block_n=16, num_warps=4, num_stages=1),
        fused_variant.Config(
            block_m=32,
            block_n=64,
            num_warps=4,
            num_stages=1,
            transpose_acc=True,
            head_chunk=16,
            head_dim_split="pad",
        ),
        fused_variant.Config(
            block_m=16, block_n=32, num_warps=4, num_stages=1, token_splits=3, head_chunk=2
        ),
        fused_variant.Config(
            block_m=16,
            block_n=16,
            num_warps=4,
            num_stages=1,
            transpose_acc=True,
            token_splits=2,
            head_chunk=1,
        ),
    ],
}


def grouped(config, case: Case):
    """`config` with group_heads = all heads of a kv group (the shared-weight-load path)."""
    import dataclasses

    return dataclasses.replace(config, group_heads=case.heads // case.kv_heads)


#: the command-line flags of a small float32 problem, kv heads = heads (add --tokens where
#: needed)
SMALL_FLAGS = [
    "--heads",
    "2",
    "--head-dim",
    "32",
    "--intermediate",
    "64",
    "--experts",
    "2",
    "--dtype",
    "float32",
]
#: the tiny problem the CLI tests run: SMALL_FLAGS with one kv head, --dtype still last
#: (tests drop it as the last two flags)
TINY_FLAGS = [*SMALL_FLAGS[:2], "--kv-heads", "1", *SMALL_FLAGS[2:]]
