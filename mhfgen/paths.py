"""Where mhfgen finds its templates and shipped database, and where it writes.

From a checkout the templates live in `<root>/templates` and the shipped database in
`<root>/tuning_db`; an installed wheel carries both inside the package
(`mhfgen/templates`, `mhfgen/tuning_db`, mapped by pyproject.toml).

Everything mhfgen writes lives under one folder, cache_dir():

    $MHFGEN_CACHE_DIR                      when set, else
    platformdirs.user_cache_path("mhfgen") ($XDG_CACHE_HOME/mhfgen, default ~/.cache/mhfgen
                                           on Linux; ~/Library/Caches/mhfgen on macOS)
      tuning.sqlite   the user tuning database (unless $MHFGEN_DB names another file)
      kernels/        generated kernel sources, named by content hash
      studies/        Optuna studies of `mhfgen tune`, one file per problem and GPU
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


#: environment variables that move what mhfgen writes (see the module doc)
CACHE_DIR_ENV, DB_ENV = "MHFGEN_CACHE_DIR", "MHFGEN_DB"


def cache_dir() -> Path:
    """Root of what mhfgen writes: $MHFGEN_CACHE_DIR, else the platform's user cache folder
    (platformdirs; $XDG_CACHE_HOME/mhfgen or ~/.cache/mhfgen on Linux)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_path("mhfgen", appauthor=False))


def user_db_path() -> Path:
    """The user's tuning database: $MHFGEN_DB, else cache_dir() / 'tuning.sqlite'."""
    env = os.environ.get(DB_ENV)
    return Path(env).expanduser() if env else cache_dir() / "tuning.sqlite"
