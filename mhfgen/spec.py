"""Typed descriptions of what a generated kernel is compiled for.

`KernelSpec` is everything baked into a generated kernel (the problem's static sizes,
the dtype and the target): a frozen, validated dataclass, part of the kernel cache's and
the tuning database's keys, so its field names are part of the database contract.

What the tuner varies is each kernel variant's own config type (mhfgen.registry: e.g.
mhfgen.variants.flash_mhf_fwd.Config). `LaunchConfig`, the union of the three original
kernels' fields, stays as a backwards-compatible name: every launcher, codegen and the
tuning database's readers accept one and convert it to the variant's config (fields the
variant does not use must keep their defaults).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

from .config_fields import choice, positive_int, power_of_two, strict_bool, strict_int
from .tiling import head_dim_chunks  # noqa: F401 - re-exported

#: dtype name -> torch dtype, for every dtype the kernels support.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
INTERPRETER = "interpreter"
#: every target a kernel is generated for: Triton's interpreter and the NVIDIA compute
#: capabilities Triton compiles for ('sm' + major + minor). A closed set: the target is
#: written into the generated source and into file names, so nothing else may reach them.
TARGETS = (INTERPRETER, "sm70", "sm72", "sm75", "sm80", "sm86", "sm87", "sm89", "sm90",
           "sm100", "sm101", "sm103", "sm110", "sm120", "sm121")
#: bounds of LaunchConfig's integer fields (block sizes are powers of two in their range)
BLOCK_RANGE = (16, 1024)
SPLIT_MAX = 1024
NUM_WARPS = (1, 2, 4, 8, 16)
HEAD_DIM_SPLITS = ("chunks", "pad")


def dtype_name(dtype: torch.dtype) -> str:
    """The spec name of a torch dtype; TypeError for an unsupported one."""
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise TypeError(f"unsupported dtype {dtype}; expected one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class KernelSpec:
    """The static problem a kernel is generated for.

    heads H, kv_heads Hkv (H % Hkv == 0), head_dim D, experts E, expert_dim De
    (intermediate I = E * De per head), dtype of q/k/u/v/o, and target
    ('sm90', 'sm80', ... or 'interpreter'). No batch, sequence length or token count: one
    generated kernel serves every token count (validation.Problem has the call's).
    """

    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    expert_dim: int
    dtype: str
    target: str

    def __post_init__(self) -> None:
        for name in ("heads", "kv_heads", "head_dim", "experts", "expert_dim"):
            positive_int(getattr(self, name), f"KernelSpec.{name}")
        if self.heads % self.kv_heads:
            raise ValueError(
                f"KernelSpec: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if not MIN_HEAD_DIM <= self.head_dim <= MAX_HEAD_DIM:
            raise ValueError(
                f"KernelSpec.head_dim must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, got {self.head_dim}")
        if self.dtype not in DTYPES:
            raise ValueError(f"KernelSpec.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.target, str) or self.target not in TARGETS:
            raise ValueError(f"KernelSpec.target must be one of {', '.join(TARGETS)}, "
                             f"got {self.target!r}")

    @property
    def group(self) -> int:
        """Query heads per kv head, G = H / Hkv."""
        return self.heads // self.kv_heads

    @property
    def intermediate(self) -> int:
        """I = E * De, the intermediate size per head."""
        return self.experts * self.expert_dim

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def key(self) -> str:
        """A compact, stable text form, used in file names and database keys."""
        return (f"H{self.heads}-Hkv{self.kv_heads}-D{self.head_dim}-E{self.experts}"
                f"-De{self.expert_dim}-{self.dtype}-{self.target}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LaunchConfig:
    """The launch parameters of the original three kernels in one record (the config
    format of tuning databases of schema 1 and 2), kept as a backwards-compatible name;
    the registry's per-variant configs are the real types (see the module doc).

    block_m:      rows per program; a row is one (token, query head) pair.
    block_n:      intermediate columns per tile (a slice of one expert's De).
    num_warps, num_stages: Triton launch options (software-pipelining depth).
    group_heads:  query heads of one kv-head group that share a program, so each K/U/V
                  tile is loaded once for all of them (must divide H / Hkv). Forward and dQ.
    head_dim_split: 'chunks' splits a non-power-of-two head_dim into power-of-two dot
                  operands (96 = 64 + 32); 'pad' pads it to the next power of two with masks.
    inter_splits: forward only; programs that split the intermediate dimension; their fp32
                  partials are summed in the same launch by the last program of each row
                  block to finish (the decode path for few tokens).
    token_splits: dK/dU/dV only; programs that split the tokens, partials reduced with
                  fp32 atomics.
    tma:          forward and dQ: load K/U/V tiles through tensor descriptors (the TMA
                  engine on sm90+) instead of pointer arithmetic.
    warp_specialize: forward and dQ, with tma and BLOCK_N dividing De (the flat loop):
                  Triton's automatic warp specialisation of the loop (producer warps for
                  the TMA loads, consumer warpgroups for MMA and math), sm90+ only.
    split_grads:  dK/dU/dV only: two kernels, dK and dU in one, dV in the other, each with
                  fewer live accumulators (S and A are computed in both).
    prefetch_scores: forward only, when BLOCK_N divides De: issue the next tile's score
                  MMAs before this tile's activation (software pipelining by hand).
    transpose_acc: dK/dU/dV only: accumulate dK^T (D x BLOCK_N) from row-major tiles, so
                  head_dim rather than BLOCK_N is the M dimension of the gradient MMAs.
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    group_heads: int = 1
    head_dim_split: str = "chunks"
    inter_splits: int = 1
    token_splits: int = 1
    tma: bool = False
    transpose_acc: bool = False
    prefetch_scores: bool = False
    split_grads: bool = False
    warp_specialize: bool = False

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            power_of_two(getattr(self, name), f"LaunchConfig.{name}", *BLOCK_RANGE)
        choice(self.num_warps, "LaunchConfig.num_warps", NUM_WARPS)
        strict_int(self.num_stages, "LaunchConfig.num_stages", 1, 8)
        choice(self.head_dim_split, "LaunchConfig.head_dim_split", HEAD_DIM_SPLITS)
        for name in ("group_heads", "inter_splits", "token_splits"):
            positive_int(getattr(self, name), f"LaunchConfig.{name}", SPLIT_MAX)
        for name in ("tma", "transpose_acc", "prefetch_scores", "split_grads",
                     "warp_specialize"):
            strict_bool(getattr(self, name), f"LaunchConfig.{name}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, partial: bool = False) -> LaunchConfig:
        """The config of a JSON object. Every field must be present (a stored or imported
        config that lacks one is refused, not defaulted) unless `partial`, where missing
        fields take their defaults (`mhfgen codegen --config`). Unknown fields and values
        of the wrong type are ValueErrors naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"LaunchConfig must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"LaunchConfig: unknown fields {sorted(unknown)}")
        missing = [n for n in names if n not in data]
        if missing and not partial:
            raise ValueError(f"LaunchConfig: missing fields {missing}")
        return cls(**data)

    def check_for(self, spec: KernelSpec) -> None:
        """Raise ValueError if this config cannot run `spec` (independent of the shape):
        the forward's and dQ's checks of group_heads, tma and warp_specialize, which every
        kernel applied to this one record."""
        from .variants._triton import check_group_and_tma

        check_group_and_tma(self, spec)


def __getattr__(name: str):
    if name == "KERNELS":
        # the original kernels, one Triton-language variant per op (fwd, bwd_dq, bwd_dkv),
        # by stem; a backwards-compatible name: mhfgen.registry lists every variant
        from . import registry

        return tuple(v.stem for v in registry.all_variants() if v.legacy_kernel)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
