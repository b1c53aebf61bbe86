"""Strict checks of one config field each: ints that are ints, bools that are bools.

The typed configs (mhfgen.spec's KernelSpec, the variants' configs), the tuning database's
records and `mhfgen import` all read values that may come from JSON or SQLite, where
`2.0`, `1.5`, `"false"` and `true` are easy to write and Python converts silently
(`int(2.7) == 2`, `bool("false") is True`, `True == 1`). Each function here takes the
value as it came, raises ValueError naming `where` (e.g. "KernelSpec.heads" or
"record 3: tokens") when it is not exactly what the field means, and returns it unchanged
otherwise. None of them converts: a value is accepted as it is or refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

#: SQLite's INTEGER is a signed 64-bit value; a larger Python int cannot be stored
INT64_MAX = 2**63 - 1


def strict_int(value, where: str, low: int | None = None, high: int | None = None) -> int:
    """`value` if it is an int (not a bool, not a float such as 2.0) in low..high."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where} must be in {_range(low, high)}, got {value}")
    return value


def positive_int(value, where: str, high: int | None = None) -> int:
    """`value` if it is an int >= 1 (and <= high)."""
    return strict_int(value, where, 1, high)


def token_count(value, where: str = "tokens") -> int:
    """`value` if it is a token count (T = B * L): an int, not a bool, of at least 1. The
    one check of a token count, a tuned problem's, a record line's or a command's flag."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{where} must be >= 1, got {value}")
    return value


def power_of_two(value, where: str, low: int, high: int) -> int:
    """`value` if it is an int power of two in low..high."""
    strict_int(value, where)
    if value < low or value > high or value & (value - 1):
        raise ValueError(f"{where} must be a power of two in {low}..{high}, got {value}")
    return value


def strict_bool(value, where: str) -> bool:
    """`value` if it is True or False (not 0/1, not "false")."""
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def choice(value, where: str, options: Iterable) -> object:
    """`value` if it is one of `options` (compared by type as well: True is not 1)."""
    options = tuple(options)
    if not any(type(value) is type(o) and value == o for o in options):
        raise ValueError(f"{where} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def check_fields(obj, where: str, **rules) -> None:
    """Check fields of `obj` in the order given, each by its rule: `bool`, true or false
    (strict_bool); an int n, an int in 1..n (positive_int); anything else, the values the
    field may take (choice). The ValueError names `where` followed by the field."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if rule is bool:
            strict_bool(value, where + name)
        elif isinstance(rule, int):
            positive_int(value, where + name, rule)
        else:
            choice(value, where + name, rule)


def strict_float(
    value, where: str, low: float | None = None, positive: bool = False, optional: bool = False
) -> float | None:
    """`value` as a float if it is a finite int or float (not a bool, not a string);
    >= low when given, > 0 with `positive`; None passes with `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    try:
        out = float(value)
    except OverflowError:
        raise ValueError(f"{where} is too large: {value}") from None
    if not math.isfinite(out):
        raise ValueError(f"{where} must be finite, got {value!r}")
    if positive and not out > 0:
        raise ValueError(f"{where} must be positive, got {value!r}")
    if low is not None and out < low:
        raise ValueError(f"{where} must be >= {low}, got {value!r}")
    return out


def strict_str(value, where: str, optional: bool = False, nonempty: bool = False) -> str | None:
    """`value` if it is a str (non-empty with `nonempty`); None passes with `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
    if nonempty and not value:
        raise ValueError(f"{where} must be a non-empty string")
    return value


def require_fields(data, names: Iterable[str], where: str) -> None:
    """ValueError naming the first of `names` that the mapping `data` lacks, and any key
    it has that is not among `names`."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, got {type(data).__name__}")
    names = tuple(names)
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(
            f"{where} lacks the field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where} has unknown fields {', '.join(unknown)}")


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f">= {low}" if low is not None else f"<= {high}"
