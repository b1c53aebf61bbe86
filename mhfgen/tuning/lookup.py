"""The in-memory index of tuned winners the dispatcher searches.

Built once per process and GPU from the layered databases (user, then shipped; see
mhfgen.tuning.db.load_layered_winners), keeping only records that still run the code they
were tuned with (`still_current`: the variant's current template hash, or an unchanged
code hash of their spec and config). `TunedIndex.find` walks the tuned steps of the
dispatch order over the winners of the variants it is given (an op's usable variants):

    1. 'exact'    a winner tuned at exactly this token count
    2. 'bucket'   a winner of the same shape bucket (nearest token count within it)
    3. 'nearest'  the winner of the same spec on this GPU nearest in log2(tokens), of the
                  variants `nearest_of` names (all given ones by default: the dispatcher
                  passes an op's preferred variant, so a config tuned at other sizes is
                  not carried over to a variant ranked below the one its heuristic runs)

and returns None when none applies (the dispatcher then uses the built-in heuristic).
At each step the user database wins over the shipped one; remaining ties go to the
larger tuned token count, then to the lower stored time (between the variants tuned at
one token count: the faster one), then to the variant stem, so every process picks the
same record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import registry
from ..spec import KernelSpec
from .buckets import bucket_distance, shape_bucket

if TYPE_CHECKING:  # the database module (and sqlite-utils) loads only when first needed
    from .db import WinnerRecord

log = logging.getLogger(__name__)

LAYER_RANK = {"user": 0, "shipped": 1}


def still_current(rec: WinnerRecord, template_hashes: dict[str, str]) -> bool:
    """Whether a stored winner runs the code it was tuned with: its template hash is the
    variant's current one, or the template changed but the code generated today for the
    record's spec and config hashes to the code_hash stored with it (the change did not
    touch that config's code). template_hashes: variant -> current template hash."""
    current = template_hashes.get(rec.key.variant)
    if current is None:
        return False
    if current == rec.key.template_hash:
        return True
    if not rec.code_hash:
        return False
    from ..codegen import code_hash

    k = rec.key
    try:
        return code_hash(k.variant, k.spec(), rec.config) == rec.code_hash
    except (ValueError, TypeError) as exc:  # a config today's templates reject
        log.debug("winner of %s no longer renders: %s", k.variant, exc)
        return False


@dataclass(frozen=True)
class Choice:
    """A dispatch decision: the variant and its config, and where they came from.

    source: 'exact' | 'bucket' | 'nearest' | 'heuristic'; layer: 'user' | 'shipped' |
    None (heuristic); tuned_tokens: the token count the record was tuned at; variant:
    the stem of the variant the config belongs to; ms: the record's stored median time.
    """

    config: object
    source: str
    layer: str | None = None
    tuned_tokens: int | None = None
    variant: str | None = None
    ms: float | None = None


@dataclass(frozen=True)
class _Entry:
    tokens: int
    bucket: int
    rank: int
    layer: str
    config: object
    variant: str
    ms: float


class TunedIndex:
    """Winners of one GPU and Triton version, by (variant, spec fields)."""

    def __init__(
        self, winners: list[tuple[str, WinnerRecord]], template_hashes: dict[str, str]
    ) -> None:
        self._entries: dict[tuple, list[_Entry]] = {}
        for layer, rec in winners:
            key = rec.key
            if not still_current(rec, template_hashes):
                log.debug(
                    "skipping a %s winner of %s tuned for template %s (current %s), "
                    "whose code changed",
                    layer,
                    key.variant,
                    key.template_hash,
                    template_hashes.get(key.variant),
                )
                continue
            entry = _Entry(
                key.tokens,
                key.bucket,
                LAYER_RANK.get(layer, len(LAYER_RANK)),
                layer,
                rec.config,
                key.variant,
                rec.ms,
            )
            self._entries.setdefault((key.variant, key.spec_fields()), []).append(entry)

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def find(self, variants, spec: KernelSpec, tokens: int, nearest_of=None) -> Choice | None:
        """The tuned choice for a call among the winners of `variants` (stems; one stem
        as a str is one variant), or None (see the module doc for the order).
        `nearest_of`: the stems whose winners step 3 may take (default: `variants`)."""
        if isinstance(variants, str):
            variants = [variants]
        spec_fields = (
            spec.heads,
            spec.kv_heads,
            spec.head_dim,
            spec.experts,
            spec.expert_dim,
            spec.dtype,
        )
        entries = [
            e
            for stem in variants
            for e in self._entries.get((stem, spec_fields), ())
            if _usable(e, spec)
        ]
        if not entries:
            return None
        exact = [e for e in entries if e.tokens == tokens]
        if exact:
            return _choice(min(exact, key=lambda e: (e.rank, e.ms, e.variant)), "exact")
        bucket = shape_bucket(tokens)
        same = [e for e in entries if e.bucket == bucket]
        if same:
            best = min(
                same, key=lambda e: (e.rank, abs(e.tokens - tokens), e.ms, -e.tokens, e.variant)
            )
            return _choice(best, "bucket")
        if nearest_of is not None:
            entries = [e for e in entries if e.variant in nearest_of]
            if not entries:
                return None
        best = min(
            entries,
            key=lambda e: (bucket_distance(e.tokens, tokens), e.rank, -e.tokens, e.ms, e.variant),
        )
        return _choice(best, "nearest")


def _usable(entry: _Entry, spec: KernelSpec) -> bool:
    try:
        registry.get(entry.variant).check(spec, entry.config)
    except (ValueError, TypeError) as exc:
        log.warning("mhfgen: ignoring a tuned config that does not fit %s: %s", spec.key(), exc)
        return False
    return True


def _choice(entry: _Entry, source: str) -> Choice:
    return Choice(entry.config, source, entry.layer, entry.tokens, entry.variant, entry.ms)
