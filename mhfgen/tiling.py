"""Tile geometry shared by the kernels, their variants and the tuner: how head_dim splits
into dot operands and how the intermediate dimension splits into BLOCK_N tiles.

Pure functions of sizes; nothing here imports torch, Triton or a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b."""
    return -(-a // b)


def pow2_ceil(x: int) -> int:
    """The smallest power of two >= max(1, x)."""
    return 1 << (max(1, x) - 1).bit_length()


def head_dim_chunks(head_dim: int, mode: str) -> list[tuple[int, int, bool]]:
    """Split head_dim into dot operands: a list of (offset, width, masked).

    'pad':    one power-of-two chunk >= head_dim, masked when wider than head_dim.
    'chunks': head_dim rounded up to a multiple of 16, written as a sum of decreasing
              powers of two (96 -> 64 + 32, 80 -> 64 + 16); only the last may be masked.
    """
    if mode == "pad":
        width = max(16, 1 << (head_dim - 1).bit_length())
        return [(0, width, width != head_dim)]
    padded = -(-head_dim // 16) * 16
    chunks, offset = [], 0
    for bit in reversed(range(padded.bit_length())):
        width = 1 << bit
        if padded & width:
            chunks.append((offset, width, offset + width > head_dim))
            offset += width
    return chunks


@dataclass(frozen=True)
class Chunk:
    """One power-of-two slice of head_dim used as a dot operand (templates read
    `c.i`, `c.off`, `c.width`, `c.masked`)."""

    i: int
    off: int
    width: int
    masked: bool


def chunks_of(head_dim: int, mode: str) -> tuple[Chunk, ...]:
    """head_dim_chunks as Chunk records, numbered."""
    return tuple(
        Chunk(i, off, width, masked)
        for i, (off, width, masked) in enumerate(head_dim_chunks(head_dim, mode))
    )


def even_tiles(spec, block_n: int) -> bool:
    """Whether BLOCK_N divides De: every weight tile lies in one expert, and the
    intermediate loop is one flat loop without masks (the templates' `even_de`)."""
    return spec.expert_dim % block_n == 0


def intermediate_blocks(spec, block_n: int) -> int:
    """Tiles of BLOCK_N columns over I: I / BLOCK_N when BLOCK_N divides De, else
    ceil(De / BLOCK_N) masked tiles per expert."""
    if even_tiles(spec, block_n):
        return spec.intermediate // block_n
    return spec.experts * cdiv(spec.expert_dim, block_n)


#: programs per multiprocessor above which a split (of tokens or of the intermediate
#: dimension) only adds partial-sum traffic: the budget every variant's split rule keeps
MAX_PROGRAMS_PER_SM = 8


def split_programs_budget(sm_count: int) -> int:
    """The most programs a split may make on `sm_count` multiprocessors."""
    return MAX_PROGRAMS_PER_SM * max(1, sm_count)


def even_splits(units: int, asked: int) -> int:
    """The splits a launch makes of `asked` over `units` (weight tiles, experts) so that
    none is left empty: ceil(units / c) splits of c = ceil(units / min(asked, units))
    units, the last the rest. A kernel that deals split s the units [s c', (s + 1) c'),
    c' = ceil(units / splits), gives each at least one (c' <= c)."""
    return cdiv(units, cdiv(units, min(asked, units)))


def split_units(spec, block_n: int) -> int:
    """What the forward's intermediate splits divide: the I / BLOCK_N tiles where BLOCK_N
    divides De, else the experts (a split takes whole experts, whose last tile is masked)."""
    return spec.intermediate // block_n if even_tiles(spec, block_n) else spec.experts
