"""The one reader of mhfgen's on/off environment variables (MHFGEN_TUNE_ON_MISS,
MHFGEN_NO_TUNED, MHFGEN_DETERMINISTIC, MHFGEN_BACKWARD_STREAMS, MHFGEN_JIT_LAUNCH,
MHFGEN_FP8_ACTIVATIONS).

A switch is on for 1, true, yes or on and off for 0, false, no or off, in any case and
with surrounding spaces; unset or empty is the variable's default. Anything else
(`MHFGEN_NO_TUNED=maybe`, `=2`) is refused: one warning line per variable and value in a
process, and the default applies. So `MHFGEN_TUNE_ON_MISS=no` never tunes, and
`MHFGEN_NO_TUNED=false` keeps the tuned configs.

A leaf module: it imports nothing of mhfgen, so any layer may read a switch through it.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

#: the words of a switch, compared after strip() and lower()
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


def parse_flag(text: str | None) -> bool | None:
    """True or False for a switch's words (case and surrounding spaces aside), None for
    anything else; unset (None) and empty are None too."""
    if text is None:
        return None
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def flag(name: str, default: bool = False) -> bool:
    """Whether the switch `name` is on: its value parsed by parse_flag, `default` where it
    is unset or empty, and `default` with one warning (per name and value, per process)
    where it is neither an on nor an off word."""
    text = os.environ.get(name)
    value = parse_flag(text)
    if value is not None:
        return value
    if text is not None and text.strip():
        with _lock:
            first = (name, text) not in _warned
            _warned.add((name, text))
        if first:
            log.warning(
                "mhfgen: ignoring %s=%r: not one of 1/true/yes/on or 0/false/no/off; "
                "treated as unset (%s)",
                name,
                text,
                "on" if default else "off",
            )
    return default


def forget_warnings() -> None:
    """Warn again about values already warned about (tests)."""
    with _lock:
        _warned.clear()
