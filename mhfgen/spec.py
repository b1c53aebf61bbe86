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
#: FP8-weight dtype names -> the activations' dtype name: q, r and o in that 16-bit dtype,
#: K, U and V in float8_e4m3fn with one float32 scale per (kv head, expert, row), passed
#: to the kernels as `scales` (3, Hkv, E, De) (mhfgen.fp8). Forward only: serving.
FP8_WEIGHT_DTYPES: dict[str, str] = {"bfloat16_e4m3": "bfloat16", "float16_e4m3": "float16"}
#: every dtype name a KernelSpec may carry
SPEC_DTYPES = (*DTYPES, *FP8_WEIGHT_DTYPES)
#: the weights' storage dtype of the FP8-weight dtypes
FP8_STORAGE = torch.float8_e4m3fn

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


def fp8_target(target: str) -> bool:
    """Whether `target` runs FP8 weights: Triton's interpreter, or sm89 (FP8 tensor
    cores) and later."""
    return target == INTERPRETER or int(target[2:]) >= 89


def pdl_target(target: str) -> bool:
    """Whether `target` has programmatic dependent launch (griddepcontrol): sm90 and later
    (not the interpreter, which runs no inline PTX)."""
    return target != INTERPRETER and int(target[2:]) >= 90


def dtype_name(dtype: torch.dtype, weight_dtype: torch.dtype | None = None) -> str:
    """The spec name of activations in `dtype` with weights in `weight_dtype` (default:
    the same dtype), e.g. "bfloat16", or "bfloat16_e4m3" for float8_e4m3fn weights;
    TypeError for an unsupported pair."""
    for name, dt in DTYPES.items():
        if dt == dtype:
            if weight_dtype is None or weight_dtype == dtype:
                return name
            if weight_dtype == FP8_STORAGE and f"{name}_e4m3" in FP8_WEIGHT_DTYPES:
                return f"{name}_e4m3"
            raise TypeError(
                f"weights in {weight_dtype} with activations in {dtype} are not supported; "
                f"expected the activations' dtype, or {FP8_STORAGE} with "
                f"{' or '.join(FP8_WEIGHT_DTYPES.values())} activations"
            )
    raise TypeError(f"unsupported dtype {dtype}; expected one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class KernelSpec:
    """The static problem a kernel is generated for.

    heads H, kv_heads Hkv (H % Hkv == 0), head_dim D, experts E, expert_dim De
    (intermediate I = E * De per head), dtype of q/k/u/v/o (or, for the FP8-weight names
    of FP8_WEIGHT_DTYPES, of q/o with K/U/V in FP8), and target
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
        if self.dtype not in SPEC_DTYPES:
            raise ValueError(
                f"KernelSpec.dtype must be one of {list(SPEC_DTYPES)}, got {self.dtype!r}"
            )
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
    def fp8_weights(self) -> bool:
        """Whether K, U and V are FP8 with per-row scales (an FP8_WEIGHT_DTYPES name)."""
        return self.dtype in FP8_WEIGHT_DTYPES

    @property
    def activation_dtype(self) -> str:
        """The dtype name of q, r and o: the dtype, or the 16-bit half of an FP8 name."""
        return FP8_WEIGHT_DTYPES.get(self.dtype, self.dtype)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of q and o (activation_dtype)."""
        return DTYPES[self.activation_dtype]

    @property
    def weight_torch_dtype(self) -> torch.dtype:
        """The torch dtype K, U and V are stored in."""
        return FP8_STORAGE if self.fp8_weights else self.torch_dtype

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
