"""flash_mhf_bwd_fused: the Triton-language backward in one pass
(flash_mhf_bwd_fused.py.jinja). A program owns one BLOCK_N weight tile of one kv
head, walks the rows (token, query head of the group) and computes every gradient from one
recomputation of S, A and dP: 8 MMA units per tile, where the split backward
(flash_mhf_bwd_dq + flash_mhf_bwd_dkv) executes 11.

dq (and dr, where an expert spans several tiles) are sums over the I / BLOCK_N programs of
a kv head: fp32 atomics into a zeroed buffer, so the result's low bits depend on the order
the programs add in. Deterministic runs use the split backward (mhfgen.kernels.backward).

Config fields beyond the tiles (mhfgen.variants._triton):
    token_splits:  programs that split the rows per weight tile; their dK/dU/dV partial
                   sums meet by fp32 atomics.
    transpose_acc: row-major (rows x BLOCK_N) tiles with dK/dU/dV accumulated transposed
                   (head_dim the M dimension of their MMAs); else transposed tiles.
    sigmoid:       'exp' (exp and reciprocal) or 'tanh' (0.5 + 0.5 tanh.approx(x / 2), one
                   MUFU op; GPU only).
    tma:           q and dO rows through TMA descriptors and dq's partial sums by TMA
                   reductions (cp.reduce.async.bulk), instead of per-element pointers
                   (64-bit addresses of every element: registers); sm90+, GPU only.
    head_chunk:    kv heads per launch. dq's fp32 partial sums live in a workspace of
                   tokens * head_chunk * (H / Hkv) * D floats, reused launch after launch;
                   the workspace budget (SCRATCH_FRACTION of dq) bounds it.

Shared memory (an estimate of Triton 3.6 on sm90), Dp and b as the forward's:
    (3 * BLOCK_N + num_stages * 2 * BLOCK_M) * Dp * b    (K/U/V + the q/dO ring)
    + 3 * BLOCK_M * BLOCK_N * b     (P, dS, dA staged as MMA operands)
    + BLOCK_M * Dp * 4              (the dq tile's staging for the atomics; shared with
                                     P/dS/dA in the TMA transposed form of one chunk)
    + 1 KiB.
Registers: (3*BN*Dp + 3*BM*BN) / (32 * num_warps): the dk/du/dv accumulators and the S, A,
dP tiles; the dq tile takes the registers S, A and dP free. (Counting it too pruned BM 128,
BN 64, 8 warps, the fastest config of the H200 sweep: 255 registers and 528 bytes of spill
stores compiled, docs/PERFORMANCE.md.)

This module holds the variant whole: its config type, support checks, resource model,
heuristic, launcher (check, allocate, launch: a plan per call signature) and registry entry;
its template and search space sit beside it.
Its launcher makes one DirectLaunch per chunk of kv heads, run by
mhfgen.kernels.bwd_chunks (which holds how the outputs and workspaces are handled).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor

from ..codegen import load_kernel
from ..kernels.buffers import contiguous_strides, ensure_descriptor_allocator
from ..kernels.bwd_chunks import Chunk, ChunkPlan, head_chunks, plan_fields, run_chunks
from ..kernels.configs import checked_call, resolve_config
from ..kernels.launch import DirectLaunch
from ..kernels.plans import CachedLaunch
from ..registry import register
from ..spec import INTERPRETER, KernelSpec
from ..tiling import intermediate_blocks
from ..workspace import (
    dr_atomic,
    fit_launches,
    kv_heads_per_launch,
    launch_problems,
)
from . import _triton
from ._triton import TileConfig

KERNEL = "flash_mhf_bwd_fused"


def flash_mhf_bwd_fused(
    q: Tensor, k: Tensor, u: Tensor, v: Tensor, r: Tensor, do: Tensor, config=None
) -> tuple[Tensor, ...]:
    """(dq, dr, dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D).

    dq: (B, L, H, D) contiguous in q's dtype; dr: (B, L, H, E) contiguous in r's dtype;
    dk, du, dv: (Hkv, E, De, D) contiguous in k's dtype. dq (and dr where an expert spans
    several tiles) are sums of fp32 atomics: not bitwise reproducible run to run.
    """
    return _launch(q, k, u, v, r, do, config=config)


def _make_plan(q, k, u, v, r, do, config) -> ChunkPlan:
    """Check the inputs, choose the config and compile: everything but the launches."""
    tokens, spec, config, copy_do, do_strides = checked_call(q, k, u, v, r, do, config, CHOOSE)
    B, L, H, D = q.shape
    E = r.shape[-1]
    fields = plan_fields(spec, config, q, k, u, v, r, copy_do)
    if tokens == 0:
        return ChunkPlan(chunks=(), **fields)
    kernel = load_kernel(KERNEL, spec, config)
    copy_q = False
    if config.tma:
        ensure_descriptor_allocator(q.device)
        # the descriptors see (B * L, H, D): the batch must fold into the sequence
        copy_q = q.shape[0] > 1 and q.stride(0) != L * q.stride(1)
        if copy_do or (do.shape[0] > 1 and do.stride(0) != L * do.stride(1)):
            copy_do, do_strides = True, contiguous_strides(tuple(do.shape))[:3]
    fields.update(copy_q=copy_q, copy_do=copy_do)
    q_strides = contiguous_strides(tuple(q.shape))[:3] if copy_q else q.stride()[:3]
    fp32, dr_workspace = fields["dq_direct"], fields["dr_mode"] == "workspace"
    rows = tokens * spec.group
    per_split, splits = _triton.row_splits(rows, config)
    width = kv_heads_per_launch(spec, config) * spec.group
    dq_strides = contiguous_strides((B, L, H if fp32 else width, D))[:3]
    dr_strides = contiguous_strides((B, L, width if dr_workspace else H, E))
    meta = _triton.launch_meta(config)
    chunks = []
    for kv0, n, h0, h1 in head_chunks(spec, config):
        scalars = (
            *q_strides,
            *r.stride(),
            *do_strides,
            *dq_strides,
            *dr_strides,
            L,
            rows,
            per_split,
            kv0,
            0 if fp32 else h0,
            h0 if dr_workspace else 0,
            H if fp32 else width,
        )
        grid = (intermediate_blocks(spec, config.block_n), n, splits)
        chunks.append(Chunk(kv0, n, h0, h1, DirectLaunch(kernel, grid, scalars, meta)))
    return ChunkPlan(chunks=tuple(chunks), **fields)


#: the config a call runs with: the given one or the dispatcher's
CHOOSE = partial(resolve_config, KERNEL)
_launch = CachedLaunch(KERNEL, _make_plan, run_chunks)


# ---------------------------------------------------------------------------------------
# the registry entry
# ---------------------------------------------------------------------------------------

#: the sigmoid forms the template can generate
SIGMOIDS = ("exp", "tanh")


@dataclass(frozen=True)
class Config(TileConfig):
    """The launch config of flash_mhf_bwd_fused (fields: see the module doc)."""

    variant = "flash_mhf_bwd_fused"

    token_splits: int = 1
    transpose_acc: bool = False
    sigmoid: str = "exp"
    head_chunk: int = 1
    tma: bool = False

    choices = {"sigmoid": SIGMOIDS}

    def check_for(self, spec: KernelSpec) -> None:
        if self.tma:
            if spec.target == INTERPRETER:
                raise ValueError(
                    "tma=True adds dq by TMA reductions, which Triton's interpreter does not run"
                )
            _triton.check_tma_target(spec)
            if self.block_m % spec.group:
                raise ValueError(
                    f"tma=True needs block_m={self.block_m} to be a multiple "
                    f"of heads/kv_heads={spec.group}"
                )
        if self.sigmoid == "tanh" and spec.target == INTERPRETER:
            raise ValueError(
                "sigmoid='tanh' is PTX inline assembly: a GPU only, not Triton's interpreter"
            )

    def describe(self) -> str:
        text = super().describe()
        if self.sigmoid != "exp":
            text += f" {self.sigmoid}"
        return text + f" hc{self.head_chunk}"


def _tma_fits(spec: KernelSpec, block_m: int) -> bool:
    """Whether tma=True can run `spec` at this block_m (Config.check_for's rules)."""
    try:
        Config(block_m=block_m, tma=True).check_for(spec)
    except ValueError:
        return False
    return True


class FlashMhfBwdFused(_triton.TritonVariant):
    stem = "flash_mhf_bwd_fused"
    op = "bwd"
    Config = Config
    flop_factor = 16  # S, A, dP recomputed once; dV, dK, dU; dQ from dS and from dA
    outputs = ("dq", "dr", "dk", "du", "dv")
    takes_grad = True
    gpu_start = (128, 64, 8, 2)  # with transpose_acc, tanh and (sm90) tma: the H200 sweep's best

    def static_params(self, spec: KernelSpec, config: Config) -> dict:
        params = _triton.tile_params(spec, config)
        params.update(
            token_split=config.token_splits > 1,
            transpose_acc=config.transpose_acc,
            sigmoid=config.sigmoid,
            dr_atomic=dr_atomic(spec, config),
            tma=config.tma,
        )
        return params

    def shared_memory(self, spec: KernelSpec, config: Config) -> int:
        dp = _triton.padded_head_dim(spec, config)
        bm, bn, st = config.block_m, config.block_n, config.num_stages
        item = spec.torch_dtype.itemsize
        elems = (3 * bn + st * 2 * bm) * dp + 3 * bm * bn
        one_chunk = len(_triton.tile_params(spec, config)["chunks"]) == 1
        # the dq tile's fp32 staging shares the P/dS/dA buffers in the TMA, transposed
        # form of one head_dim chunk (Triton 3.6 on sm90: 229912 bytes at BM 128, BN 64,
        # 2 stages, D = 128, where this gives 230400)
        staging = 0 if (config.tma and config.transpose_acc and one_chunk) else bm * dp * 4
        return elems * item + staging + 1024

    def registers(self, spec: KernelSpec, config: Config) -> float:
        bm, bn, dp = config.block_m, config.block_n, _triton.padded_head_dim(spec, config)
        return (3 * bn * dp + 3 * bm * bn) / (32 * config.num_warps)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> Config:
        """The widest head_chunk within the workspace budget; token splits when the
        weight tiles of one launch fill fewer than two waves of programs."""
        interp = spec.target == INTERPRETER
        rows = max(1, tokens) * spec.group
        tiles = _triton.start_tiles(self, spec, rows)
        bm, bn = tiles["block_m"], tiles["block_n"]
        gpu = {}
        if not interp:
            gpu = dict(
                transpose_acc=True,
                # tanh.approx (relative error 2^-10.7) only where the bar allows it
                sigmoid="tanh" if spec.dtype != "float32" else "exp",
                tma=_tma_fits(spec, bm),
            )
        most = 1 if interp else rows // (4 * bm)
        config = fit_launches(
            spec, Config(**tiles, **gpu), tokens, sm_count, intermediate_blocks(spec, bn), most
        )
        return _triton.shrink_to_fit(self, spec, config)

    def own_prune_reason(
        self, spec: KernelSpec, config: Config, tokens: int, rows: int, sm_count: int
    ) -> str | None:
        problems = launch_problems(spec, config, tokens)
        if problems:
            return problems[0]
        programs = intermediate_blocks(spec, config.block_n) * kv_heads_per_launch(spec, config)
        return _triton.token_split_reason(config, rows, programs, sm_count)


register(FlashMhfBwdFused())
