"""The tuning database: every trial and every winner, in SQLite through sqlite-utils.

Contract (docs/CONTRACTS.md, section 4; docs/TUNING.md, "The tuning database"). Tables:

    meta     (key TEXT PRIMARY KEY, value TEXT)
             format = 'mhfgen-tuning', schema_version = SCHEMA_VERSION
    winners  KEY_COLUMNS + config, ms, tflops, default_ms, speedup, timer, trials,
             mhfgen_version, torch_version, created, code_hash;  UNIQUE(KEY_COLUMNS)
    trials   id + KEY_COLUMNS + config, status ('ok' | 'failed'), stage, reason, ms, tflops,
             error, timer, study, trial_number, mhfgen_version, torch_version, created

KEY_COLUMNS name everything that decides whether a config is still valid and fast: op
(fwd, bwd_dq, bwd_dkv), variant (the kernel variant's stem, mhfgen.registry), template_hash
(of that variant's template only, so one changed template does not invalidate the
others), the spec (heads, kv_heads, head_dim, experts, expert_dim, dtype),
the shape bucket and the exact tuned token count, gpu_name, compute_capability and
triton_version. `config` is the JSON of the variant's config (its own fields only); `ms`
a median in milliseconds; `created` an ISO-8601 UTC date. `code_hash` (schema 2) is the
hash of the code generated for the winner's spec and config (mhfgen.codegen.code_hash):
a winner whose template hash is no longer current still applies while that code is
unchanged (mhfgen.tuning.lookup).

Schemas: 1 (no code_hash), 2 (a `kernel` column naming one of three kernels, configs as
the 13-field JSON of mhfgen.schema2), 3 (op + variant; per-variant config JSON). Older files
are upgraded in place when opened for writing (MIGRATIONS); opened read-only they are
copied into memory and upgraded there, so every reader sees schema 3. The 2 -> 3 step
renames `kernel` to `variant` (each old kernel is the variant whose `schema2_kernel`
names it, mhfgen.schema2), fills `op` from that variant and rewrites each config as the variant's JSON
(fields the variant does not use dropped; they held their neutral values).

Writers use WAL and a 60 s busy timeout, and every read-modify-write runs in one
`BEGIN IMMEDIATE` transaction, so several tuning processes can write one file at once.
A writer that still finds the file locked when the busy timeout expires waits and tries
again with a growing pause, logging a warning each time, for up to WRITE_WAIT_S in all
(then DatabaseBusyError). A migration runs under the same write lock and reads the schema
version again inside it, so writers racing on an older file migrate it once.
A file that is not SQLite, is SQLite but not mhfgen's, has a newer schema, fails SQLite's
`PRAGMA quick_check` when opened for writing, is not a regular file, or a disk that fills
up raises a typed TuningDBError with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import sqlite_utils

from .. import paths, registry, schema2
from ..config_fields import strict_float, strict_int, strict_str
from ..spec import SPEC_FIELD_TYPES, SPEC_FIELDS, KernelSpec

log = logging.getLogger(__name__)

FORMAT = "mhfgen-tuning"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 60.0
#: how long, in all, a write waits for another writer's lock (BUSY_TIMEOUT_S per attempt,
#: then a pause that doubles from WRITE_RETRY_FIRST_S up to WRITE_RETRY_MAX_S)
WRITE_WAIT_S = 1800.0
WRITE_RETRY_FIRST_S, WRITE_RETRY_MAX_S = 1.0, 30.0

#: the KernelSpec fields a key holds as columns, in KernelSpec's order (the target follows
#: from the key's compute capability)
SPEC_COLUMNS = tuple(name for name in SPEC_FIELDS if name != "target")
KEY_COLUMNS = (
    "op",
    "variant",
    "template_hash",
    *SPEC_COLUMNS,
    "bucket",
    "tokens",
    "gpu_name",
    "compute_capability",
    "triton_version",
)
TRIALS_INDEX = ("variant", "template_hash", "gpu_name", "heads", "head_dim", "bucket")


def _add_code_hash(db: sqlite_utils.Database) -> None:
    db["winners"].add_column("code_hash", str)


def canonical_config_json(variant, text: str) -> str:
    """A stored schema-2 config as `variant`'s JSON; `text` unchanged where it does not
    convert (its reader then skips that row with a warning)."""
    try:
        return schema2.config(variant, json.loads(text)).to_json()
    except (ValueError, TypeError):
        return text


def _add_variant(db: sqlite_utils.Database) -> None:
    """Schema 2 -> 3: kernel -> (op, variant), configs as the variant's JSON."""
    conn = db.conn
    for table in ("winners", "trials"):
        conn.execute(f"ALTER TABLE {table} RENAME COLUMN kernel TO variant")
        conn.execute(f"ALTER TABLE {table} ADD COLUMN op TEXT NOT NULL DEFAULT ''")
        for (kernel,) in conn.execute(f"SELECT DISTINCT variant FROM {table}").fetchall():
            variant = schema2.variant_of_kernel(kernel)
            if variant is None:
                continue  # not a kernel of schema 2: its rows stay unreadable, as before
            conn.execute(
                f"UPDATE {table} SET variant = ?, op = ? WHERE variant = ?",
                [variant.stem, variant.op, kernel],
            )
            rows = conn.execute(
                f"SELECT rowid, config FROM {table} WHERE variant = ?", [variant.stem]
            ).fetchall()
            conn.executemany(
                f"UPDATE {table} SET config = ? WHERE rowid = ?",
                [(canonical_config_json(variant, text), rowid) for rowid, text in rows],
            )
    conn.execute("DROP INDEX IF EXISTS winners_key")
    conn.execute("DROP INDEX IF EXISTS trials_problem")
    db["winners"].create_index(KEY_COLUMNS, unique=True, index_name="winners_key")
    db["trials"].create_index(TRIALS_INDEX, index_name="trials_problem")


#: schema version -> function upgrading a connection from it to the next version
MIGRATIONS: dict[int, object] = {1: _add_code_hash, 2: _add_variant}
_KEY_TYPES = {
    **{name: int for name in SPEC_COLUMNS if SPEC_FIELD_TYPES[name] is int},
    "bucket": int,
    "tokens": int,
}
WINNER_COLUMNS = {
    **{c: _KEY_TYPES.get(c, str) for c in KEY_COLUMNS},
    "config": str,
    "ms": float,
    "tflops": float,
    "default_ms": float,
    "speedup": float,
    "timer": str,
    "trials": int,
    "mhfgen_version": str,
    "torch_version": str,
    "created": str,
    "code_hash": str,
}
TRIAL_COLUMNS = {
    "id": int,
    **{c: _KEY_TYPES.get(c, str) for c in KEY_COLUMNS},
    "config": str,
    "status": str,
    "stage": str,
    "reason": str,
    "ms": float,
    "tflops": float,
    "error": float,
    "timer": str,
    "study": str,
    "trial_number": int,
    "mhfgen_version": str,
    "torch_version": str,
    "created": str,
}


#: the largest token count a key may hold: its bucket (the next power of two) must still
#: fit SQLite's signed 64-bit INTEGER
MAX_TOKENS = 2**62


_COMPUTE_CAPABILITY = re.compile(r"none|[0-9]{1,3}\.[0-9]{1,3}")


def check_key_values(values: dict, where: str) -> None:
    """ValueError naming `where` and the column when a key value has the wrong type or
    range: spec sizes positive ints, bucket and tokens ints in 0..MAX_TOKENS, the rest
    non-empty strings of printable characters (no terminal escape codes: `mhfgen list`
    prints them), the compute capability 'MAJOR.MINOR' or 'none'. Nothing is converted
    (2.7 heads is an error, not 2 heads)."""
    for column in KEY_COLUMNS:
        value = values[column]
        if column in ("bucket", "tokens"):
            strict_int(value, f"{where}{column}", 0, MAX_TOKENS)
        elif column in _KEY_TYPES:
            strict_int(value, f"{where}{column}", 1, 2**31 - 1)
        else:
            strict_str(value, f"{where}{column}", nonempty=True)
            if not value.isprintable():
                raise ValueError(f"{where}{column} must be printable text, got {value!r}")
    if not _COMPUTE_CAPABILITY.fullmatch(values["compute_capability"]):
        raise ValueError(
            f"{where}compute_capability must be 'MAJOR.MINOR' (e.g. '9.0') or "
            f"'none', got {values['compute_capability']!r}"
        )


class TuningDBError(Exception):
    """A tuning database that cannot be used; str() is a one-line explanation."""


class CorruptDatabaseError(TuningDBError):
    """Not an SQLite file, or an SQLite file whose mhfgen tables are damaged."""


class ForeignDatabaseError(TuningDBError):
    """An SQLite database that is not an mhfgen tuning database."""


class SchemaVersionError(TuningDBError):
    """A tuning database of a schema version this mhfgen cannot read or migrate."""


class DatabaseBusyError(TuningDBError):
    """Another writer held the database past WRITE_WAIT_S."""


class StorageFullError(TuningDBError):
    """The disk (or the database's page limit) is full; the write was rolled back."""


def _busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def _full(exc: sqlite3.Error) -> bool:
    return "database or disk is full" in str(exc).lower()


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Probe(Exception):
    """Rolls back TuningDB._probe_write's transaction."""


def _not_a_database(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the file's content is wrong (not its permissions or
    its folder): only then is "delete or replace it" the advice."""
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _check_writable(path: Path, create_parents: bool = True) -> None:
    """TuningDBError saying what is wrong when `path` cannot be a writable database: its
    folder cannot be created (or, without `create_parents`, does not exist) or written
    (SQLite creates its -wal and -journal files there), or the file exists and cannot be
    written."""
    folder = path.parent
    if not folder.exists() and folder == paths.cache_dir():
        try:  # the default place, the cache folder: created private (0700)
            paths.private_dir(folder)
        except OSError:
            pass  # reported below, as for any other folder
    if not create_parents and not folder.is_dir():
        raise TuningDBError(
            f"{folder} does not exist (the folder of {path}); mhfgen creates "
            f"the database file, not its folders: create the folder or name "
            f"another file"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuningDBError(f"cannot create the folder of {path} ({exc.strerror or exc})") from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise TuningDBError(
            f"{path} is read-only (no write permission); this command "
            f"writes to it: make it writable or use another file "
            f"(--db or $MHFGEN_DB)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        what = "the database" if path.exists() else "a new database"
        raise TuningDBError(
            f"{folder} is not writable: SQLite needs to create {what} and its "
            f"journal files there ({path.name}-wal, {path.name}-journal); "
            f"make the folder writable or use another file (--db or "
            f"$MHFGEN_DB)"
        )


#: what a database path that is not a regular file is, tested in this order
_NOT_FILES = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(path: Path) -> None:
    """TuningDBError when `path` exists and is not a regular file (a character or block
    device, a FIFO, a socket): SQLite would hang, fail half-way or write into a device."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # absent (or unreachable: opening it says why)
    if stat.S_ISREG(mode):
        return
    kind = paths.file_kind(mode, _NOT_FILES, "not a regular file")
    raise TuningDBError(
        f"{path} is {kind}, not a tuning database file; use a regular file (--db or $MHFGEN_DB)"
    )


def spec_columns(spec: KernelSpec) -> dict:
    """The spec's SPEC_COLUMNS values by name: a key's spec part, and the filter of
    winners() and trials() that selects the spec's shape and dtype."""
    return {name: getattr(spec, name) for name in SPEC_COLUMNS}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _TuningKey:
    """Everything that decides whether a stored config applies (see the module doc): the
    spec's fields flattened into the table's columns (SQL filters and a unique index need
    them apart; spec_fields() gathers them), the tuned token count and the GPU. Its fields
    are KEY_COLUMNS, typed as the table's columns (TuningKey below)."""

    def __post_init__(self) -> None:
        check_key_values(self.as_dict(), "TuningKey.")

    @property
    def kernel(self) -> str:
        """The variant stem (the name schema 2 called the kernel)."""
        return self.variant

    @classmethod
    def of(
        cls,
        kernel: str,
        template_hash: str,
        spec: KernelSpec,
        bucket: int,
        tokens: int,
        gpu_name: str,
        compute_capability: str,
        triton_version: str,
    ) -> TuningKey:
        """The key of variant `kernel` (its op from the registry)."""
        return cls(
            op=registry.get(kernel).op,
            variant=kernel,
            template_hash=template_hash,
            **spec_columns(spec),
            bucket=bucket,
            tokens=tokens,
            gpu_name=gpu_name,
            compute_capability=compute_capability,
            triton_version=triton_version,
        )

    def spec_fields(self) -> tuple:
        """The values of SPEC_COLUMNS (heads, kv_heads, head_dim, experts, expert_dim,
        dtype)."""
        return tuple(getattr(self, name) for name in SPEC_COLUMNS)

    def spec(self) -> KernelSpec:
        """The KernelSpec of the key's shape and dtype for its compute capability's target
        (ValueError where those do not make one)."""
        from ..device import target_for

        return KernelSpec(
            **dict(zip(SPEC_COLUMNS, self.spec_fields())),
            target=target_for(self.compute_capability),
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict, where: str = "") -> TuningKey:
        """The key of a database row or an imported record; ValueError naming `where`
        (e.g. 'record 3: ') and the column when a value is missing or of the wrong type.
        A record of schema 2, with `kernel` and no variant, maps to the variant that took
        that kernel over (and one with a variant but no op gets its variant's op)."""
        if "variant" not in row and "kernel" in row:
            variant = schema2.variant_of_kernel(row["kernel"])
            if variant is None:
                raise ValueError(f"{where}unknown kernel {row['kernel']!r}")
            row = {**row, "variant": variant.stem, "op": variant.op}
        elif "op" not in row and isinstance(row.get("variant"), str):
            try:
                row = {**row, "op": registry.get(row["variant"]).op}
            except registry.RegistryError as exc:
                raise ValueError(f"{where}{exc}") from None
        missing = [c for c in KEY_COLUMNS if c not in row]
        if missing:
            raise ValueError(
                f"{where}missing key field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            )
        check_key_values(row, where)
        if row["variant"] in registry.stems():
            op = registry.get(row["variant"]).op
            if row["op"] != op:  # one variant key would hold two winners, under two ops
                raise ValueError(
                    f"{where}op {row['op']!r} is not the op of variant {row['variant']} ({op!r})"
                )
        return cls(**{c: row[c] for c in KEY_COLUMNS})

    def parse_config(self, data):
        """A stored config (JSON text or a dict) as this key's variant's config."""
        variant = registry.get(self.variant)
        return variant.config_from_dict(json.loads(data) if isinstance(data, str) else data)


TuningKey = dataclasses.make_dataclass(
    "TuningKey",
    [(c, _KEY_TYPES.get(c, str)) for c in KEY_COLUMNS],
    bases=(_TuningKey,),
    frozen=True,
)
TuningKey.__module__, TuningKey.__doc__ = __name__, _TuningKey.__doc__


def _variant_config(key: TuningKey, config, where: str):
    """`config`, checked to be the config of `key`'s variant; ValueError naming `where`
    for anything else."""
    try:
        return registry.get(key.variant).coerce(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.config: {exc}") from None


def _text(value) -> str:
    return value or ""


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


class _Record:
    """Base of the records of a table row: fields `key` (the row's key columns) and
    `config` (its column as JSON), then the row's other columns, one field each of the
    same name. A NULL or absent column reads back as None, unless the record's `READERS`
    (field -> function of the stored value) says otherwise."""

    READERS: ClassVar[dict] = {}

    def to_row(self) -> dict:
        row = {**self.key.as_dict(), "config": self.config.to_json()}
        row.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)[2:])
        return row

    @classmethod
    def from_row(cls, row: dict):
        key = TuningKey.from_row(row)
        values = {
            f.name: cls.READERS.get(f.name, lambda value: value)(row.get(f.name))
            for f in dataclasses.fields(cls)[2:]
        }
        return cls(key, key.parse_config(row["config"]), **values)


@dataclass(frozen=True)
class WinnerRecord(_Record):
    """The chosen config of one key, its median time and its speed-up over the default."""

    key: TuningKey
    config: object  # the variant's config (mhfgen.registry.VariantConfig)
    ms: float
    tflops: float
    default_ms: float | None
    speedup: float | None
    timer: str
    trials: int
    mhfgen_version: str
    torch_version: str
    created: str
    code_hash: str | None = None  # mhfgen.codegen.code_hash of (variant, spec, config)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _variant_config(self.key, self.config, "WinnerRecord"))
        strict_float(self.ms, "WinnerRecord.ms", positive=True)
        strict_float(self.tflops, "WinnerRecord.tflops", low=0.0)
        strict_float(self.default_ms, "WinnerRecord.default_ms", positive=True, optional=True)
        strict_float(self.speedup, "WinnerRecord.speedup", positive=True, optional=True)
        strict_int(self.trials, "WinnerRecord.trials", 0, 2**31 - 1)
        for name in ("timer", "mhfgen_version", "torch_version", "created"):
            strict_str(getattr(self, name), f"WinnerRecord.{name}")
        strict_str(self.code_hash, "WinnerRecord.code_hash", optional=True)

    READERS: ClassVar[dict] = dict(
        ms=float,
        tflops=lambda value: float(value or 0.0),
        default_ms=_optional_float,
        speedup=_optional_float,
        timer=_text,
        trials=lambda value: int(value or 0),
        mhfgen_version=_text,
        torch_version=_text,
        created=_text,
        code_hash=lambda value: value or None,
    )


@dataclass(frozen=True)
class TrialRecord(_Record):
    """One evaluated candidate: timed ('ok', ms) or failed (stage and reason)."""

    key: TuningKey
    config: object  # the variant's config (mhfgen.registry.VariantConfig)
    status: str
    ms: float | None = None
    tflops: float | None = None
    error: float | None = None
    stage: str | None = None
    reason: str | None = None
    timer: str = ""
    study: str = ""
    trial_number: int | None = None
    mhfgen_version: str = ""
    torch_version: str = ""
    created: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _variant_config(self.key, self.config, "TrialRecord"))
        if self.status not in ("ok", "failed"):
            raise ValueError(f"TrialRecord.status must be 'ok' or 'failed', got {self.status!r}")
        for name in ("ms", "tflops", "error"):  # error may be inf or nan (a failed check)
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise ValueError(f"TrialRecord.{name} must be a number, got {value!r}")
        if self.status == "ok" and self.ms is None:
            raise ValueError("TrialRecord.ms is needed for a trial of status 'ok'")
        if self.trial_number is not None:
            strict_int(self.trial_number, "TrialRecord.trial_number", 0)

    READERS: ClassVar[dict] = {
        name: _text for name in ("timer", "study", "mhfgen_version", "torch_version", "created")
    }

    def to_row(self) -> dict:
        """The row; a record without a creation time is created now."""
        return {**super().to_row(), "created": self.created or utc_now()}


class TuningDB:
    """One tuning database file. Open with `TuningDB.open(path, readonly=...)`.

    A writable open creates the file and its schema when absent; a read-only open of an
    absent or empty file gives an empty database. Use as a context manager or close().
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.db = sqlite_utils.Database(conn)
        self.empty = False
        self.old_schema: int | None = None  # a read-only file of an older schema (read
        # through an upgraded copy in memory)

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(
        cls, path: str | Path, readonly: bool = False, create_parents: bool = True
    ) -> TuningDB:
        """The database at `path`; writable unless `readonly`. A writable open creates
        the file, and its missing folders only with `create_parents` (a path the user
        named must not make folders appear: `--db /typo/dir/x.sqlite` is an error)."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise TuningDBError(f"{path} is a directory, not a tuning database file")
        _check_regular(path)
        if readonly:
            if not path.exists() or path.stat().st_size == 0:
                self = cls(path, sqlite3.connect(":memory:"), True)
                self.empty = True
                return self
            try:
                return cls._open_readonly(path, "mode=ro")
            except TuningDBError as exc:
                # NOTE: a database in WAL mode (every file this module wrote) cannot be
                # opened read-only where its -shm file cannot be created: a read-only
                # file system, as a database shipped inside a job's image often is. Such
                # a file is not being written, so it is opened as immutable instead.
                if "unable to open" not in str(exc):
                    raise
                try:
                    return cls._open_readonly(path, "mode=ro&immutable=1")
                except TuningDBError:
                    raise exc from None
        else:
            _check_writable(path, create_parents)
            try:
                conn = sqlite3.connect(
                    str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise TuningDBError(f"{path}: cannot open it for writing ({exc})") from exc
        self = cls._checked(path, conn, readonly)
        if not readonly:
            self._probe_write()
        return self

    def _probe_write(self) -> None:
        """A write that is rolled back: a file SQLite opened read-only (no permission, a
        read-only file system) fails here, before any work, not when the first result
        is stored."""
        try:
            with self.transaction():
                self.db.execute("UPDATE meta SET value = value WHERE key = 'format'")
                raise _Probe
        except _Probe:
            pass
        except sqlite3.Error as exc:
            self.close()
            raise TuningDBError(
                f"{self.path} cannot be written ({exc}); use a writable file (--db or $MHFGEN_DB)"
            ) from exc

    @classmethod
    def _open_readonly(cls, path: Path, query: str) -> TuningDB:
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?{query}",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        return cls._checked(path, conn, True)

    @classmethod
    def _checked(cls, path: Path, conn: sqlite3.Connection, readonly: bool) -> TuningDB:
        """The database on `conn`, its schema validated (or created); the connection is
        closed if that fails."""
        self = cls(path, conn, readonly)
        try:
            self._validate_or_create()
        except sqlite3.Error as exc:
            self.db.conn.close()
            if _full(exc):
                raise StorageFullError(
                    f"{path}: the disk is full (or the database reached its size limit); "
                    f"free some space and run the command again"
                ) from exc
            raise TuningDBError(f"{path}: cannot open it ({_one_line(exc)})") from exc
        except BaseException:
            self.db.conn.close()
            raise
        return self

    def _validate_or_create(self) -> None:
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            tables = set(self.db.table_names())
        except sqlite3.DatabaseError as exc:
            if _not_a_database(exc):
                raise CorruptDatabaseError(
                    f"{self.path} is not a usable SQLite file ({exc}); delete or replace it"
                ) from exc
            raise TuningDBError(
                f"{self.path}: cannot open it ({exc}); check the file's and "
                f"its folder's permissions"
            ) from exc
        if not tables:
            if self.readonly:
                self.empty = True
                return
            self._create()
            return
        if not self.readonly:
            problem = self.integrity_problem()
            if problem is not None:
                raise CorruptDatabaseError(
                    f"{self.path} is damaged (SQLite's quick_check: {problem}); writing to it "
                    f"could lose what it holds: restore it from a copy, or export what still "
                    f"reads (`mhfgen export --db {self.path}`) and import that into a new file"
                )
        version = self._schema_version(tables)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has tuning-database schema {version}, newer than the "
                f"{SCHEMA_VERSION} this mhfgen reads; upgrade mhfgen or use another database"
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)
        self._check_columns()
        if not self.readonly:
            self.db.enable_wal()

    def integrity_problem(self) -> str | None:
        """None when SQLite's `PRAGMA quick_check` finds the file sound, else its first
        finding in one line (with how many more there are)."""
        try:
            rows = [r[0] for r in self.db.execute("PRAGMA quick_check(20)").fetchall()]
        except sqlite3.DatabaseError as exc:
            return _one_line(exc)
        if rows == ["ok"]:
            return None
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        return _one_line(rows[0] if rows else "no answer", 200) + more

    def _schema_version(self, tables: set[str]) -> int:
        if "meta" not in tables:
            raise ForeignDatabaseError(
                f"{self.path} is an SQLite database but not an mhfgen tuning database "
                f"(it has no 'meta' table; tables: {', '.join(sorted(tables))})"
            )
        try:
            meta = {r["key"]: r["value"] for r in self.db["meta"].rows}
        except (sqlite3.DatabaseError, KeyError) as exc:
            raise CorruptDatabaseError(f"{self.path}: unreadable 'meta' table ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise ForeignDatabaseError(
                f"{self.path} is an SQLite database but not an mhfgen tuning database "
                f"(meta format is {meta.get('format')!r}, expected {FORMAT!r})"
            )
        try:
            return int(meta["schema_version"])
        except (KeyError, ValueError) as exc:
            raise CorruptDatabaseError(f"{self.path}: no valid schema_version in 'meta'") from exc

    def _migrate(self, version: int) -> None:
        if self.readonly and all(MIGRATIONS.get(v) for v in range(version, SCHEMA_VERSION)):
            # read through an upgraded copy in memory: the file itself is not written
            memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self.db.conn.backup(memory)
            self.db.conn.close()
            self.db = sqlite_utils.Database(memory)
            self.old_schema = version
            self._upgrade(version, readonly_copy=True)
            return
        self._upgrade(version)

    def _upgrade(self, version: int, readonly_copy: bool = False) -> None:
        """Every step from `version` to SCHEMA_VERSION in one write transaction. The
        version is read again inside it: another writer may have migrated the file
        between this process's first read and its taking the lock."""

        def missing(v: int) -> SchemaVersionError:
            return SchemaVersionError(
                f"{self.path} has tuning-database schema {v}, older than "
                f"{SCHEMA_VERSION}, and no migration exists; re-tune into a new database"
            )

        if self.readonly and not readonly_copy:
            raise missing(version)
        with self.transaction():
            version = self._schema_version(set(self.db.table_names()))
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has tuning-database schema {version}, newer than the "
                    f"{SCHEMA_VERSION} this mhfgen reads; upgrade mhfgen or use another "
                    f"database"
                )
            while version < SCHEMA_VERSION:
                step = MIGRATIONS.get(version)
                if step is None:
                    raise missing(version)
                step(self.db)
                version += 1
                self.db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)]
                )

    def _check_columns(self) -> None:
        for table, columns in (("winners", WINNER_COLUMNS), ("trials", TRIAL_COLUMNS)):
            if table not in self.db.table_names():
                raise CorruptDatabaseError(f"{self.path}: the '{table}' table is missing")
            missing = set(columns) - set(self.db[table].columns_dict)
            if missing:
                raise CorruptDatabaseError(
                    f"{self.path}: the '{table}' table lacks columns {sorted(missing)}"
                )

    def _create(self) -> None:
        self.db.enable_wal()
        with self.transaction():
            self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            self.db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", [FORMAT]
            )
            self.db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )
            self.db["winners"].create(
                WINNER_COLUMNS, not_null=set(KEY_COLUMNS) | {"config", "ms"}, if_not_exists=True
            )
            self.db["winners"].create_index(
                KEY_COLUMNS, unique=True, if_not_exists=True, index_name="winners_key"
            )
            self.db["trials"].create(
                TRIAL_COLUMNS,
                pk="id",
                not_null=set(KEY_COLUMNS) | {"config", "status"},
                if_not_exists=True,
            )
            self.db["trials"].create_index(
                TRIALS_INDEX, if_not_exists=True, index_name="trials_problem"
            )

    # -- transactions ------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front (waiting for another
        writer, see _begin), so a read-modify-write cannot interleave with another writer.
        A full disk rolls the whole transaction back and raises StorageFullError."""
        conn = self.db.conn
        self._begin()
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error) and _full(exc):
                raise StorageFullError(
                    f"{self.path}: the disk is full (or the database reached its size "
                    f"limit); nothing of this write was stored: free some space and run the "
                    f"command again"
                ) from exc
            raise

    def _begin(self) -> None:
        """BEGIN IMMEDIATE. Where another writer still holds the lock when SQLite's busy
        timeout expires, wait and try again, the pause doubling from WRITE_RETRY_FIRST_S
        up to WRITE_RETRY_MAX_S, with a warning each time, for WRITE_WAIT_S in all; then
        DatabaseBusyError. A tuner thus outlives a long import or a stuck writer instead
        of dying with "database is locked" and losing the trial it was storing."""
        conn = self.db.conn
        start = time.monotonic()
        pause = WRITE_RETRY_FIRST_S
        attempt = 0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if attempt:
                    log.warning(
                        "mhfgen: %s: got the write lock after %.1f s",
                        self.path,
                        time.monotonic() - start,
                    )
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    if _full(exc):
                        raise StorageFullError(
                            f"{self.path}: the disk is full (or the database reached its "
                            f"size limit): free some space and run the command again"
                        ) from exc
                    raise
                waited = time.monotonic() - start
                if waited + pause > WRITE_WAIT_S:
                    raise DatabaseBusyError(
                        f"{self.path} is still locked by another writer after {waited:.0f} s "
                        f"({attempt + 1} attempts); find the process that holds it (`fuser "
                        f"{self.path}`) or write to another file (--db or $MHFGEN_DB)"
                    ) from exc
                attempt += 1
                log.warning(
                    "mhfgen: %s is locked by another writer (waited %.1f s); "
                    "retrying in %.1f s (attempt %d)",
                    self.path,
                    waited,
                    pause,
                    attempt + 1,
                )
                time.sleep(pause)
                pause = min(pause * 2, WRITE_RETRY_MAX_S)

    def _writable(self) -> None:
        if self.readonly:
            raise TuningDBError(f"{self.path} is open read-only")

    # -- writing -----------------------------------------------------------------
    def add_trial(self, record: TrialRecord, once: bool = False) -> bool:
        """Append one trial; with `once`, only if no trial of the same identity is stored
        (see add_trials). Returns whether it was added."""
        return self.add_trials([record], once) == 1

    def add_trials(self, records: list[TrialRecord], once: bool = False) -> int:
        """Append trials in one transaction; returns how many were added. With `once` a
        record is skipped when a trial of the same identity is stored: its key, `study`,
        `trial_number` and `config` (one evaluation of one study; the study's name
        changes with a fresh start, see mhfgen.tuning.study). So the workers of a shared
        study and the process that finishes it can all write, and each trial is stored
        once."""
        self._writable()
        where = (
            " AND ".join(f"{c} = ?" for c in (*KEY_COLUMNS, "study", "config"))
            + " AND trial_number IS ?"
        )
        added = 0
        with self.transaction():
            for record in records:
                row = record.to_row()
                if (
                    once
                    and self.db.execute(
                        f"SELECT 1 FROM trials WHERE {where} LIMIT 1",
                        [row[c] for c in (*KEY_COLUMNS, "study", "config", "trial_number")],
                    ).fetchone()
                    is not None
                ):
                    continue
                self.db["trials"].insert(row)
                added += 1
        return added

    def put_winner(self, record: WinnerRecord, policy: str = "replace") -> str:
        """Store the winner of its key. policy 'replace' overwrites a stored winner (the
        tuner, whose final side-by-side timing included it); 'faster' keeps whichever
        has the lower time (import). Returns 'added', 'replaced', 'kept' or 'same' (the
        stored record is this one, every column equal: nothing to write)."""
        return self.put_winners([record], policy)[0]

    def put_winners(self, records: list[WinnerRecord], policy: str = "replace") -> list[str]:
        """put_winner for each record, all in one transaction: every record is stored or,
        when any fails (a value SQLite cannot hold, a full disk), none is."""
        if policy not in ("replace", "faster"):
            raise ValueError(f"policy must be 'replace' or 'faster', got {policy!r}")
        self._writable()
        where = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
        rows = [record.to_row() for record in records]  # outside the write lock
        columns = list(WINNER_COLUMNS)
        select = f"SELECT {', '.join(columns)} FROM winners WHERE {where}"
        insert = (
            f"INSERT INTO winners ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        )
        ms_at = columns.index("ms")
        outcomes = []
        with self.transaction():  # short: one indexed read per record, writes in bulk
            conn = self.db.conn
            pending: dict[tuple, list] = {}  # key -> the row it gets (in record order)
            stored: set[tuple] = set()  # keys that held a winner before
            for row in rows:
                key = tuple(row[c] for c in KEY_COLUMNS)
                values = [row[c] for c in columns]
                old = pending.get(key)
                if old is None:
                    old = conn.execute(select, key).fetchone()
                    if old is not None:
                        stored.add(key)
                if old is not None and list(old) == values:
                    outcomes.append("same")
                    continue
                if old is not None and policy == "faster" and old[ms_at] <= row["ms"]:
                    outcomes.append("kept")
                    continue
                pending[key] = values
                outcomes.append("added" if old is None else "replaced")
            conn.executemany(
                f"DELETE FROM winners WHERE {where}", [key for key in pending if key in stored]
            )
            conn.executemany(insert, list(pending.values()))
        return outcomes

    def remove_winner(self, key: TuningKey) -> bool:
        """Delete the winner of `key`; whether there was one."""
        self._writable()
        row = key.as_dict()
        where = " AND ".join(f"{c} = ?" for c in KEY_COLUMNS)
        with self.transaction():
            cursor = self.db.execute(
                f"DELETE FROM winners WHERE {where}", [row[c] for c in KEY_COLUMNS]
            )
        return cursor.rowcount > 0

    # -- reading -----------------------------------------------------------------
    def _select(self, table: str, filters: dict, order: str) -> list[dict]:
        if "kernel" in filters:  # the schema-2 name of the variant column
            filters = {("variant" if k == "kernel" else k): v for k, v in filters.items()}
        if self.empty:
            return []
        unknown = set(filters) - set(KEY_COLUMNS) - {"status"}
        if unknown:
            raise ValueError(f"unknown filter columns {sorted(unknown)}")
        where = " AND ".join(f"{c} = ?" for c in filters) or "1"
        try:
            cursor = self.db.execute(
                f"SELECT * FROM {table} WHERE {where} ORDER BY {order}", list(filters.values())
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r)) for r in cursor.fetchall()]
        except sqlite3.DatabaseError as exc:
            raise CorruptDatabaseError(f"{self.path}: cannot read '{table}' ({exc})") from exc

    def winners(self, **filters) -> list[WinnerRecord]:
        """Winners whose key columns equal `filters`, in a deterministic order."""
        order = ", ".join(KEY_COLUMNS)
        out = []
        for row in self._select("winners", filters, order):
            try:
                out.append(WinnerRecord.from_row(row))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s: skipping an unreadable winner (%s)", self.path, exc)
        return out

    def trials(self, **filters) -> list[TrialRecord]:
        """Trials whose key columns (and status) equal `filters`, fastest first."""
        out = []
        for row in self._select("trials", filters, "ms IS NULL, ms, id"):
            try:
                out.append(TrialRecord.from_row(row))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s: skipping an unreadable trial (%s)", self.path, exc)
        return out

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> TuningDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def layer_paths() -> list[tuple[str, Path]]:
    """The databases the dispatcher consults, in order: ('user', paths.user_db_path():
    $MHFGEN_DB or tuning.sqlite in the cache folder), then ('shipped',
    tuning_db/tuning.sqlite) when the shipped folder exists."""
    layers = [("user", paths.user_db_path())]
    try:
        layers.append(("shipped", paths.shipped_db_path()))
    except FileNotFoundError:
        pass
    return layers


def load_layered_winners(
    gpu_name: str, compute_capability: str, triton_version: str
) -> list[tuple[str, WinnerRecord]]:
    """(layer, winner) for this GPU and Triton version from every layer, user first.

    A layer that cannot be read is skipped with a logged warning: at run time a broken
    database must never break the user's model.
    """
    out: list[tuple[str, WinnerRecord]] = []
    for layer, path in layer_paths():
        try:
            with TuningDB.open(path, readonly=True) as db:
                for rec in db.winners(
                    gpu_name=gpu_name,
                    compute_capability=compute_capability,
                    triton_version=triton_version,
                ):
                    out.append((layer, rec))
        except (TuningDBError, sqlite3.Error, OSError) as exc:
            log.warning(
                "mhfgen: ignoring the %s tuning database, using built-in configs instead: %s",
                layer,
                exc,
            )
    return out
