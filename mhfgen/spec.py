"""Typed descriptions of what a generated kernel is compiled for.

`KernelSpec` is everything baked into a generated kernel (the problem's static sizes,
the dtype and the target): a frozen, validated dataclass, part of the kernel cache's and
the tuning database's keys, so its field names are part of the database contract.

What the tuner varies is each kernel variant's own config type (mhfgen.registry: e.g.
mhfgen.variants.flash_mhf_fwd.Config, registry.get(stem).Config); the bounds of their
common fields are here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import torch

from .config_fields import positive_int

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
TARGETS = (
    INTERPRETER,
    "sm70",
    "sm72",
    "sm75",
    "sm80",
    "sm86",
    "sm87",
    "sm89",
    "sm90",
    "sm100",
    "sm101",
    "sm103",
    "sm110",
    "sm120",
    "sm121",
)
#: bounds of the variants' config fields (block sizes are powers of two in their range)
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
                f"KernelSpec: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if not MIN_HEAD_DIM <= self.head_dim <= MAX_HEAD_DIM:
            raise ValueError(
                f"KernelSpec.head_dim must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, got {self.head_dim}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"KernelSpec.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.target, str) or self.target not in TARGETS:
            raise ValueError(
                f"KernelSpec.target must be one of {', '.join(TARGETS)}, got {self.target!r}"
            )

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
        return (
            f"H{self.heads}-Hkv{self.kv_heads}-D{self.head_dim}-E{self.experts}"
            f"-De{self.expert_dim}-{self.dtype}-{self.target}"
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: KernelSpec's fields in order: the one list the tuning database's key columns and the
#: record files' problem fields are made of
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(KernelSpec))
#: their types
SPEC_FIELD_TYPES: dict[str, type] = typing.get_type_hints(KernelSpec)
