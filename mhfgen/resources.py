"""Static resource estimates of a kernel config, to reject impossible configs before
compiling (heuristics and tuner alike).

Shared memory, fitted to Triton 3.6's allocations on sm90 (H200, bf16; see
docs/PERFORMANCE.md), with Dp the head_dim padded to its dot chunks and b the element size:
    flash_mhf_fwd:     (num_stages * 3 * BLOCK_N + BLOCK_M) * Dp * b   (K/U/V ring + q)
    flash_mhf_bwd_dq:  (num_stages * 3 * BLOCK_N + 2 * BLOCK_M) * Dp * b (+ q, dO)
    flash_mhf_bwd_dkv: (3 * BLOCK_N + num_stages * 2 * BLOCK_M) * Dp * b (q/dO ring + K/U/V)
                       + 3 * BLOCK_M * BLOCK_N * b with transpose_acc (P, dS, dA are the
                       MMAs' B operands, staged in shared memory)
plus 1 KiB of barriers and scratch. fp32 kernels use IEEE (non-tensor-core) dots, which stage
their register operands in shared memory too: + BLOCK_M * BLOCK_N * b for the forward's P,
+ 2 * BLOCK_M * BLOCK_N * b for dQ's dS and dA (measured: dQ at 128/64, one stage, D = 128
needs 262144 bytes, the base formula gives 230400).
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .spec import INTERPRETER, KernelSpec, LaunchConfig, head_dim_chunks

#: sm90's opt-in limit per block, the default where the device cannot be asked
DEFAULT_SMEM_LIMIT = 232448


def padded_head_dim(spec: KernelSpec, config: LaunchConfig) -> int:
    return sum(width for _, width, _ in head_dim_chunks(spec.head_dim, config.head_dim_split))


def shared_memory_estimate(kernel: str, spec: KernelSpec, config: LaunchConfig) -> int:
    """Bytes of shared memory `kernel` needs with `config` (see the module docstring)."""
    dp = padded_head_dim(spec, config)
    size = spec.torch_dtype.itemsize
    bm, bn, st = config.block_m, config.block_n, config.num_stages
    fp32 = spec.dtype == "float32"
    if kernel == "flash_mhf_fwd":
        elems = (st * 3 * bn + bm) * dp + (bm * bn if fp32 else 0)
    elif kernel == "flash_mhf_bwd_dq":
        elems = (st * 3 * bn + 2 * bm) * dp + (2 * bm * bn if fp32 else 0)
    elif kernel == "flash_mhf_bwd_dkv":
        elems = (3 * bn + st * 2 * bm) * dp + (3 * bm * bn if config.transpose_acc else 0)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return elems * size + 1024


@lru_cache(maxsize=None)
def shared_memory_limit(target: str) -> int:
    """The per-block shared memory limit of `target` (unbounded for the interpreter)."""
    if target == INTERPRETER:
        return 1 << 62
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        if f"sm{props.major}{props.minor}" == target:
            return int(getattr(props, "shared_memory_per_block_optin", DEFAULT_SMEM_LIMIT))
    return DEFAULT_SMEM_LIMIT


def fits(kernel: str, spec: KernelSpec, config: LaunchConfig) -> bool:
    """Whether `config`'s shared memory estimate fits the target."""
    return shared_memory_estimate(kernel, spec, config) <= shared_memory_limit(spec.target)
