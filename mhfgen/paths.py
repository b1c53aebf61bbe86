"""Where mhfgen finds its templates and shipped database, and where it writes.

The built-in variants' templates and search spaces live beside their modules in
`mhfgen/variants/`. The shipped database lives in `<root>/tuning_db` in a checkout; an
installed wheel carries it inside the package (`mhfgen/tuning_db`, mapped by
pyproject.toml).

Everything mhfgen writes lives under one folder, cache_dir():

    $MHFGEN_CACHE_DIR                      when set, else
    platformdirs.user_cache_path("mhfgen") ($XDG_CACHE_HOME/mhfgen, default ~/.cache/mhfgen
                                           on Linux; ~/Library/Caches/mhfgen on macOS)
      tuning.sqlite   the user tuning database (unless $MHFGEN_DB names another file)
      kernels/        generated kernel sources, named by content hash
      studies/        Optuna studies of `mhfgen tune`, one file per problem and GPU

The cache folder and its kernels/ and studies/ are private (private_dir): created 0700,
and refused when another user owns them or anyone but their owner may write to them, as
code is imported from kernels/ and lock files live in studies/.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE.parent / name, _PACKAGE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mhfgen: cannot find its '{name}' folder beside or inside {_PACKAGE}")


def package_dir() -> Path:
    """The folder of the mhfgen package."""
    return _PACKAGE


def templates_dir() -> Path:
    """The folder of the built-in variants: their modules, Jinja templates and search
    spaces, and the template macros they share."""
    return _PACKAGE / "variants"


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


class UnsafeFolderError(PermissionError):
    """A cache folder that another user owns or may write to; str() is one line."""


def private_dir(path: Path) -> Path:
    """`path` as a folder only this user can write: created with mode 0700 where absent
    (the folders above it as mkdir makes them), else checked. UnsafeFolderError when it
    is owned by another user or writable by its group or by others (chmod 700 fixes the
    latter); another OSError when it cannot be created."""
    path = Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process, or not a folder
            pass
    info = path.stat()  # a symlinked cache folder is judged by the folder it names
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a folder")
    if info.st_uid != os.geteuid():
        raise UnsafeFolderError(
            f"{path} belongs to another user (uid {info.st_uid}); mhfgen "
            f"imports code and takes locks there, so it must be yours: "
            f"set {CACHE_DIR_ENV} to a folder of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolderError(
            f"{path} may be written by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}); mhfgen imports code and "
            f"takes locks there: `chmod 700 {path}`, or set "
            f"{CACHE_DIR_ENV} to a private folder"
        )
    return path


def private_cache_subdir(name: str) -> Path:
    """cache_dir() / name, both checked (and created) by private_dir."""
    return private_dir(private_dir(cache_dir()) / name)


def file_kind(mode: int, kinds: tuple, other: str) -> str:
    """How a refused path of file mode `mode` is named: the words of the first (stat
    test, words) of `kinds` whose test holds, else `other`."""
    return next((words for test, words in kinds if test(mode)), other)
