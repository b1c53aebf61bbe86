"""Tuned winners as JSON with provenance: export from a database, import (merge) into one.

Export format (schema_version: the tuning database's, 3):
    {"format": "mhfgen-tuning-export", "schema_version": 3, "exported": ISO date,
     "mhfgen_version": ..., "source": database path,
     "records": [{op, variant, template_hash, heads, kv_heads, head_dim, experts,
                  expert_dim, dtype, bucket, tokens, gpu_name, compute_capability,
                  triton_version, config: {the variant's config}, ms, tflops, default_ms,
                  speedup, timer, trials, mhfgen_version, torch_version, created,
                  code_hash}, ...]}
Exports of schema 1 and 2 name a `kernel` instead of op and variant, and hold 13-field
configs: each record maps to the variant that took that kernel over, as the database
migration maps rows (mhfgen.tuning.db).

Import merges record by record: a key not stored is added; for a stored key the faster
record (lower ms) wins, and a record equal to the stored one in every field counts as
already stored. Every record is checked before anything is written (strict types:
an int field is an int, a flag a JSON bool, a config complete; see _record), and the
records are written in one transaction: an import stores all of its records or none.
Records that no longer run the code they were tuned with are refused
(mhfgen.tuning.lookup.still_current: another template hash, and a code hash of their spec
and config that differs from today's or is missing). A record of another template hash
whose code hash is today's runs exactly the code it was tuned with: it is stored under
today's template hash (and counted in `restamped`), so dispatch accepts it without
rendering its code again. Exporting a database and importing the export into a new file
so brings its records up to a template edit that changed no generated code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import registry, schema2
from ..config_fields import strict_float, strict_int, strict_str
from ..version import __version__
from .buckets import shape_bucket
from .db import KEY_COLUMNS, SCHEMA_VERSION, TuningDB, TuningKey, WinnerRecord, utc_now

EXPORT_FORMAT = "mhfgen-tuning-export"
_PROVENANCE = (
    "ms",
    "tflops",
    "default_ms",
    "speedup",
    "timer",
    "trials",
    "mhfgen_version",
    "torch_version",
    "created",
    "code_hash",
)


class ExchangeError(ValueError):
    """An export file that cannot be imported; str() is one line."""


def export_winners(db: TuningDB, **filters) -> dict:
    """Every winner of `db` whose key columns equal `filters`, as an export document."""
    records = [winner_as_dict(w) for w in db.winners(**filters)]
    return {
        "format": EXPORT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "exported": utc_now(),
        "mhfgen_version": __version__,
        "source": str(db.path),
        "records": records,
    }


def winner_as_dict(w: WinnerRecord) -> dict:
    """One winner as an export record: its key's columns, config and provenance."""
    rec = w.key.as_dict()
    rec["config"] = w.config.as_dict()
    rec.update({name: getattr(w, name) for name in _PROVENANCE})
    return rec


@dataclass
class ImportReport:
    """What an import did: counts per outcome and one message per refused group."""

    added: int = 0
    replaced: int = 0
    kept: int = 0
    same: int = 0  # stored already, every field equal
    refused: int = 0
    restamped: int = 0  # of those stored: moved onto today's template hash (code unchanged)
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class UnknownRecord:
    """An export record of a variant (or old kernel) this mhfgen does not have."""

    name: str


def _text(value, name: str, nonempty: bool = False) -> str:
    """A provenance string: a str of printable characters (`list` and `show` print it)."""
    strict_str(value, name, nonempty=nonempty)
    if not value.isprintable():
        raise ValueError(f"{name} must be printable text, got {value!r}")
    return value


def _record(i: int, rec) -> WinnerRecord | UnknownRecord:
    """Record `i` of an export, every field checked strictly (ExchangeError naming the
    record and the field): the key (ints are ints, the spec valid, the bucket that of the
    tokens), a complete config of the record's variant, and the provenance's numbers and
    strings. A record of schema 1 or 2 (a `kernel`, a 13-field config) maps to the
    variant that took that kernel over; one of a variant this mhfgen lacks is an
    UnknownRecord (refused by the import, not an error of the file)."""
    where = f"record {i}: "
    try:
        if not isinstance(rec, dict):
            raise ValueError(f"must be an object, got {type(rec).__name__}")
        name = rec.get("variant", rec.get("kernel"))
        known = (
            schema2.variant_of_kernel(name) is not None
            if "variant" not in rec
            else name in registry.stems()
        )
        if isinstance(name, str) and not known:
            return UnknownRecord(name)
        unknown = sorted(set(rec) - set(KEY_COLUMNS) - {"config", "kernel", *_PROVENANCE})
        if unknown:
            raise ValueError(f"unknown fields {', '.join(unknown)}")
        for name in ("config", "ms"):
            if name not in rec:
                raise ValueError(f"missing field {name}")
        key = TuningKey.from_row(rec, where="")
        key.spec()
        if key.bucket != shape_bucket(key.tokens):
            raise ValueError(
                f"bucket {key.bucket} is not the bucket of {key.tokens} tokens "
                f"({shape_bucket(key.tokens)})"
            )
        try:
            if not isinstance(rec["config"], dict):
                raise ValueError(f"must be an object, got {type(rec['config']).__name__}")
            config = (
                key.parse_config(rec["config"])
                if "variant" in rec  # else schema 2
                else schema2.config(registry.get(key.variant), rec["config"])
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"config: {exc}") from None
        ms = strict_float(rec["ms"], "ms", positive=True)

        def given(name: str, check, default):
            """The field checked as it is; only an absent field or null takes the default
            (False, "" or [] is a wrong value, not a missing one)."""
            value = rec.get(name)
            return default if value is None else check(value, name)

        return WinnerRecord(
            key,
            config,
            ms,
            given("tflops", lambda v, n: strict_float(v, n, low=0.0), 0.0),
            strict_float(rec.get("default_ms"), "default_ms", positive=True, optional=True),
            strict_float(rec.get("speedup"), "speedup", positive=True, optional=True),
            given("timer", _text, ""),
            given("trials", lambda v, n: strict_int(v, n, 0, 2**31 - 1), 0),
            given("mhfgen_version", _text, ""),
            given("torch_version", _text, ""),
            given("created", _text, ""),
            given("code_hash", lambda v, n: _text(v, n, nonempty=True), None),
        )
    except (ValueError, TypeError) as exc:
        raise ExchangeError(f"{where}{exc}") from None


def parse_export(data) -> list[WinnerRecord | UnknownRecord]:
    """The winner records of an export document; ExchangeError when it is not one."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ExchangeError(f'not an mhfgen export (expected "format": "{EXPORT_FORMAT}")')
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ExchangeError(f"'schema_version' must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ExchangeError(
            f"export schema {version!r} is newer than the {SCHEMA_VERSION} "
            f"this mhfgen reads; upgrade mhfgen"
        )
    if version < 1:
        raise ExchangeError(f"'schema_version' must be 1..{SCHEMA_VERSION}, got {version!r}")
    records = data.get("records")
    if not isinstance(records, list):
        raise ExchangeError("'records' must be a list")
    return [_record(i, rec) for i, rec in enumerate(records)]


def import_winners(
    db: TuningDB, records: list[WinnerRecord], template_hashes: dict[str, str]
) -> ImportReport:
    """Merge `records` into `db` (see the module doc); template_hashes: variant -> the
    current hash."""
    report = ImportReport()
    refused: dict[tuple[str, str | None], int] = {}
    from .lookup import still_current

    accepted = []
    for rec in records:
        if isinstance(rec, UnknownRecord):
            refused[(rec.name, None)] = refused.get((rec.name, None), 0) + 1
            continue
        if not still_current(rec, template_hashes):
            refused[(rec.key.variant, rec.key.template_hash)] = (
                refused.get((rec.key.variant, rec.key.template_hash), 0) + 1
            )
            continue
        current = template_hashes[rec.key.variant]
        if rec.key.template_hash != current:  # its code hash is today's (still_current)
            rec = dataclasses.replace(rec, key=dataclasses.replace(rec.key, template_hash=current))
            report.restamped += 1
        accepted.append(rec)
    for outcome in db.put_winners(accepted, policy="faster"):  # one transaction
        setattr(report, outcome, getattr(report, outcome) + 1)
    for (kernel, old), count in sorted(refused.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        report.refused += count
        if old is None:
            report.messages.append(
                f"refused {count} record(s) of unknown kernel variant {kernel!r}"
            )
        else:
            report.messages.append(
                f"refused {count} record(s) of {kernel} tuned for template {old}; this mhfgen's "
                f"template is {template_hashes[kernel]} and their kernel code changed: "
                f"re-tune with `mhfgen tune`"
            )
    return report


def key_filters(**values) -> dict:
    """The non-None values whose names are key columns (for --kernel, --gpu, ...)."""
    return {k: v for k, v in values.items() if v is not None and k in KEY_COLUMNS}


def kernel_filter(name: str | None) -> dict:
    """The key filter of a --kernel argument: an op ('fwd', 'dq', 'bwd_dq') filters by
    op, anything else by variant stem (the schema-2 kernel names are today's stems)."""
    if name is None:
        return {}
    if name in registry.OPS or any(op.short == name for op in registry.OPS.values()):
        return {"op": registry.op_named(name)}
    return {"variant": name}
