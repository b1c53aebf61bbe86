"""Where mhfgen finds its templates and shipped database, and where it writes caches.

From a checkout the templates live in `<root>/templates` and the shipped database in
`<root>/tuning_db`; an installed wheel carries both inside the package
(`mhfgen/templates`, `mhfgen/tuning_db`, mapped by pyproject.toml).
"""
from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE.parent / name, _PACKAGE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mhfgen: cannot find its '{name}' folder beside or inside {_PACKAGE}")


def templates_dir() -> Path:
    """The folder of Jinja kernel templates and their search spaces."""
    return _data_dir("templates")


def shipped_db_path() -> Path:
    """The read-only tuning database shipped with mhfgen."""
    return _data_dir("tuning_db") / "tuning.sqlite"


def cache_dir() -> Path:
    """Root of mhfgen's caches: $MHFGEN_CACHE_DIR, else ~/.cache/mhfgen."""
    env = os.environ.get("MHFGEN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mhfgen"


def user_db_path() -> Path:
    """The user's tuning database: $MHFGEN_DB, else ~/.cache/mhfgen/tuning.sqlite."""
    env = os.environ.get("MHFGEN_DB")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mhfgen" / "tuning.sqlite"
