"""What the Triton-language variants share: the tile fields of their configs (and the
checks of their other fields), the template parameters derived from them, the launch
options, the heuristic's start and shrinking, the pruning rules that depend only on tiles
and those of split work, and their registry entries' base (TritonVariant).

Tile fields (every Triton-language variant):
    block_m:   rows per program; a row is one (token, query head) pair.
    block_n:   intermediate columns per tile (a slice of one expert's De).
    num_warps, num_stages: Triton launch options (software-pipelining depth).
    head_dim_split: 'chunks' splits a non-power-of-two head_dim into power-of-two dot
               operands (96 = 64 + 32); 'pad' pads it to the next power of two with masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..config_fields import choice, power_of_two, strict_int
from ..registry import Variant, VariantConfig
from ..resources import shared_memory_limit
from ..spec import (
    BLOCK_RANGE,
    HEAD_DIM_SPLITS,
    INTERPRETER,
    NUM_WARPS,
    KernelSpec,
)
from ..tiling import (
    cdiv,
    chunks_of,
    even_tiles,
    head_dim_chunks,
    pow2_ceil,
    split_programs_budget,
)

#: the heuristic's starting point in the interpreter: (block_m, block_n, warps, stages)
INTERPRETER_START = (32, 32, 4, 1)
#: the tile fields, first in every Triton-language config
TILE_FIELDS = ("block_m", "block_n", "num_warps", "num_stages", "head_dim_split")


@dataclass(frozen=True)
class TileConfig(VariantConfig):
    """The tile fields of a Triton-language variant's config (see the module doc). The
    fields a variant adds are checked by their type or `choices`, in their order
    (VariantConfig.check_typed)."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    head_dim_split: str = "chunks"

    def __post_init__(self) -> None:
        where = f"{self.variant} config"
        for name in ("block_m", "block_n"):
            power_of_two(getattr(self, name), f"{where}: {name}", *BLOCK_RANGE)
        choice(self.num_warps, f"{where}: num_warps", NUM_WARPS)
        strict_int(self.num_stages, f"{where}: num_stages", 1, 8)
        choice(self.head_dim_split, f"{where}: head_dim_split", HEAD_DIM_SPLITS)
        self.check_typed(*(name for name in self.field_names() if name not in TILE_FIELDS))

    def describe(self) -> str:
        text = f"BM{self.block_m} BN{self.block_n} w{self.num_warps} s{self.num_stages}"
        if getattr(self, "group_heads", 1) > 1:
            text += f" gh{self.group_heads}"
        if self.head_dim_split != "chunks":
            text += f" {self.head_dim_split}"
        for name, short in (
            ("inter_splits", "is"),
            ("token_splits", "ts"),
            ("reduce_unroll", "ru"),
        ):
            if getattr(self, name, 1) > 1:
                text += f" {short}{getattr(self, name)}"
        for flag, short in (
            ("tma", "tma"),
            ("warp_specialize", "ws"),
            ("transpose_acc", "T"),
            ("prefetch_scores", "prefetch"),
            ("split_grads", "split"),
            ("pdl", "pdl"),
        ):
            if getattr(self, flag, False):
                text += f" {short}"
        if getattr(self, "inter_splits", 1) > 1 and not getattr(self, "store_reset", True):
            text += " xchg"  # the split reduction's ticket reset by an atomic exchange
        return text


class GroupedConfig(TileConfig):
    """The config of a variant whose programs take `group_heads` query heads of a kv group
    and may load K/U/V through TMA (`tma`, `warp_specialize`): the forward's and dQ's,
    which declare those fields. Against a spec: group_heads divides H / Hkv; tma needs an
    sm90+ target and 16-byte head_dim rows; warp_specialize needs tma."""

    def check_for(self, spec: KernelSpec) -> None:
        if spec.group % self.group_heads:
            raise ValueError(
                f"group_heads={self.group_heads} must divide heads/kv_heads={spec.group}"
            )
        if self.warp_specialize and not self.tma:
            raise ValueError(
                "warp_specialize=True needs tma=True (Triton's Hopper warp "
                "specialisation handles descriptor loads, not pointer loads)"
            )
        if self.tma:
            check_tma_target(spec)


def check_tma_target(spec: KernelSpec) -> None:
    """What tma=True needs of a spec in every Triton-language variant: an sm90+ target (or
    the interpreter) and head_dim rows of a multiple of 16 bytes."""
    if spec.target != INTERPRETER and not spec.target.startswith(("sm9", "sm1")):
        raise ValueError(f"tma=True needs an sm90+ target, not {spec.target}")
    itemsize = min(spec.torch_dtype.itemsize, spec.weight_torch_dtype.itemsize)
    if spec.head_dim * itemsize % 16:
        raise ValueError(
            f"tma=True needs head_dim rows of a multiple of 16 bytes; "
            f"head_dim={spec.head_dim} in {spec.dtype} is not"
        )


def tile_params(spec: KernelSpec, config: TileConfig) -> dict:
    """The template parameters every Triton-language template takes: `chunks` (the dot
    operands of head_dim) and `even_de` (BLOCK_N divides De: one flat loop, no masks)."""
    return {
        "chunks": chunks_of(spec.head_dim, config.head_dim_split),
        "even_de": even_tiles(spec, config.block_n),
    }


def padded_head_dim(spec: KernelSpec, config: TileConfig) -> int:
    """Dp: head_dim padded to its dot chunks."""
    return sum(width for _, width, _ in head_dim_chunks(spec.head_dim, config.head_dim_split))


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
    return max(16, min(preferred, pow2_ceil(rows)))


def launch_meta(config: TileConfig) -> dict:
    """The launch's tile constexprs and options: BLOCK_M, BLOCK_N, num_warps, num_stages,
    and launch_pdl where the config asks for programmatic dependent launch (`pdl`)."""
    meta = dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if getattr(config, "pdl", False):
        meta["launch_pdl"] = True
    return meta


def row_splits(rows: int, config: TileConfig) -> tuple[int, int]:
    """(rows per split, splits) where config.token_splits programs share `rows` rows: a
    split takes ceil(rows / token_splits) rows rounded up to a multiple of BLOCK_M, so
    ceil(rows / per_split) <= token_splits splits remain and none is empty."""
    per_split = cdiv(cdiv(rows, config.token_splits), config.block_m) * config.block_m
    return per_split, cdiv(rows, per_split)


def start_tiles(variant, spec: KernelSpec, rows: int, narrow_warps: bool = True) -> dict:
    """The tile fields a heuristic starts from for `rows` (token, head) rows: from
    INTERPRETER_START in the interpreter, else from the variant's gpu_start, (block_m,
    block_n, num_warps, num_stages); block_m by rows_block, block_n by pick_block_n, and
    with `narrow_warps` 4 warps where block_m < 64."""
    start = INTERPRETER_START if spec.target == INTERPRETER else variant.gpu_start
    bm, bn, warps, stages = start
    bm = rows_block(rows, bm)
    return dict(
        block_m=bm,
        block_n=pick_block_n(spec.expert_dim, bn),
        num_warps=4 if narrow_warps and bm < 64 else warps,
        num_stages=stages,
    )


def shrink_to_fit(variant, spec: KernelSpec, config: TileConfig) -> TileConfig:
    """Lower num_stages, then the larger tile dimension, until the config's shared
    memory estimate fits the target (in the interpreter, whose shared memory is
    unbounded, the config as it is)."""
    limit = shared_memory_limit(spec.target)
    while variant.shared_memory(spec, config) > limit:
        if config.num_stages > 1:
            config = dataclasses.replace(config, num_stages=config.num_stages - 1)
        elif max(config.block_m, config.block_n) > 16:
            field = "block_m" if config.block_m >= config.block_n else "block_n"
            config = dataclasses.replace(config, **{field: getattr(config, field) // 2})
        else:
            break  # 16 x 16, one stage: nothing smaller exists
    return config


def tile_prune_reason(spec: KernelSpec, config: TileConfig, rows: int) -> str | None:
    """The tile rules of every Triton-language variant, with `rows` the (token, head)
    rows one program's row blocks walk:
      - BLOCK_M > max(16, next_pow2(rows)), or BLOCK_N > max(16, next_pow2(De));
      - BLOCK_M < 64 on sm90 for >= 256 rows (a Hopper warpgroup MMA has M = 64), unless
        the intermediate dim is split over programs (inter_splits > 1: few programs,
        a call that streams its weights, where the MMA's shape does not set the pace;
        on an H100, 256 rows of grouped decode ran 1.15x faster in 32-row blocks);
      - head_dim_split='pad' where it generates the same code as 'chunks'."""
    if config.block_m > max(16, pow2_ceil(rows)):
        return f"block_m={config.block_m} is larger than the {rows} rows"
    split = getattr(config, "inter_splits", 1) > 1
    if spec.target.startswith("sm9") and config.block_m < 64 and rows >= 64 * 4 and not split:
        return f"block_m={config.block_m} is below the 64-row warpgroup MMA for {rows} rows"
    if config.block_n > max(16, pow2_ceil(spec.expert_dim)):
        return f"block_n={config.block_n} is larger than expert_dim={spec.expert_dim}"
    if config.head_dim_split == "pad" and head_dim_chunks(spec.head_dim, "pad") == head_dim_chunks(
        spec.head_dim, "chunks"
    ):
        return "head_dim_split='pad' generates the same code as 'chunks'"
    return None


def token_split_reason(config, rows: int, programs: int, sm_count: int) -> str | None:
    """split_reason of config.token_splits > 1 splits of the row blocks of `rows` rows,
    `programs` programs each (None without splits)."""
    if config.token_splits == 1:
        return None
    blocks = cdiv(rows, config.block_m)
    return split_reason(config, "token_splits", blocks, "the row blocks", programs, sm_count)


def split_reason(
    config, field: str, units: int, what: str, programs: int, sm_count: int
) -> str | None:
    """Why the config's `field` splits (programs that share one program's work, their
    partial sums added) are not worth it: more splits than the `units` they divide
    (`what`, e.g. 'the row blocks'), or `programs` x splits more than tiling.MAX_PROGRAMS_PER_SM
    per multiprocessor, past which a split only adds partial-sum traffic."""
    splits = getattr(config, field)
    if splits > units:
        return f"{field}={splits} exceeds {what}"
    budget = split_programs_budget(sm_count)
    if programs * splits > budget:
        return f"{field}={splits} makes more than {budget} programs"
    return None


class TritonVariant(Variant):
    """The registry entry of a Triton-language variant: it runs in Triton's interpreter
    too, and its heuristic starts from `gpu_start` on a GPU (start_tiles)."""

    family = "triton"
    preference = 50
    #: the heuristic's start on a GPU: (block_m, block_n, num_warps, num_stages)
    gpu_start: ClassVar[tuple[int, int, int, int]]

    def prune_reason(self, spec: KernelSpec, config, tokens: int, sm_count: int) -> str | None:
        """The tile rules (tile_prune_reason) for the rows one program walks, max(1,
        tokens) x the query heads it takes (its config's group_heads, else the kv group),
        then the variant's own (own_prune_reason)."""
        rows = max(1, tokens) * getattr(config, "group_heads", spec.group)
        return tile_prune_reason(spec, config, rows) or self.own_prune_reason(
            spec, config, tokens, rows, sm_count
        )

    def own_prune_reason(
        self, spec: KernelSpec, config, tokens: int, rows: int, sm_count: int
    ) -> str | None:
        """The variant's rules after the tile rules, `rows` as prune_reason counts them."""
        return None
