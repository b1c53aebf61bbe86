"""The SQLite tuning database: schema, keys, merge policies, typed errors, WAL and
concurrent writers, the layered (user over shipped) read."""

import dataclasses
import json
import logging
import multiprocessing
import sqlite3

import pytest
from tuning_helpers import run_sql

from mhfgen import registry
from mhfgen.schema2 import SCHEMA2_FIELDS
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.db import (
    SCHEMA_VERSION,
    CorruptDatabaseError,
    ForeignDatabaseError,
    SchemaVersionError,
    TrialRecord,
    TuningDB,
    TuningKey,
    WinnerRecord,
    load_layered_winners,
    utc_now,
)
from mhfgen.variants.flash_mhf_bwd_dkv import Config as Dkv
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

SPEC = KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90")


def key(tokens=16384, bucket=16384, kernel="flash_mhf_fwd", gpu="NVIDIA H200"):
    return TuningKey.of(kernel, "abc123", SPEC, bucket, tokens, gpu, "9.0", "3.6.0")


def winner(ms=1.0, config=None, **key_args):
    config = config or registry.get(key_args.get("kernel", "flash_mhf_fwd")).Config(block_m=128)
    return WinnerRecord(
        key(**key_args),
        config,
        ms,
        300.0,
        1.2,
        1.2 / ms,
        "test timer",
        10,
        "0.1.0",
        "2.11",
        utc_now(),
    )


def test_a_new_database_has_schema_version_wal_and_tables(tmp_path):
    path = tmp_path / "sub" / "t.sqlite"
    with TuningDB.open(path) as db:
        meta = {r["key"]: r["value"] for r in db.db["meta"].rows}
        assert meta == {"format": "mhfgen-tuning", "schema_version": str(SCHEMA_VERSION)}
        assert db.db.journal_mode == "wal"
        assert set(db.db.table_names()) >= {"meta", "winners", "trials"}
        assert set(dbmod.KEY_COLUMNS) <= set(db.db["winners"].columns_dict)


def test_the_key_columns_are_the_contract_s_and_follow_kernel_spec():
    """KEY_COLUMNS and TuningKey are made from KernelSpec's fields; the columns (names
    and order) are the database's and the exports' contract."""
    assert dbmod.KEY_COLUMNS == (
        "op",
        "variant",
        "template_hash",
        "heads",
        "kv_heads",
        "head_dim",
        "experts",
        "expert_dim",
        "dtype",
        "bucket",
        "tokens",
        "gpu_name",
        "compute_capability",
        "triton_version",
    )
    assert tuple(f.name for f in dataclasses.fields(TuningKey)) == dbmod.KEY_COLUMNS
    assert key().spec() == dataclasses.replace(SPEC, target="sm90")
    assert key().spec_fields() == tuple(v for k, v in SPEC.as_dict().items() if k != "target")


def test_trials_and_winners_round_trip(tmp_path):
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        db.add_trial(TrialRecord(key(), Fwd(), "ok", ms=2.0, tflops=100.0, error=1e-3))
        db.add_trial(
            TrialRecord(
                key(), Fwd(block_m=256), "failed", stage="resources", reason="out of shared memory"
            )
        )
        w = winner()
        assert db.put_winner(w) == "added"
    with TuningDB.open(tmp_path / "t.sqlite", readonly=True) as db:
        trials = db.trials(kernel="flash_mhf_fwd")
        assert [t.status for t in trials] == ["ok", "failed"]  # timed first
        assert trials[1].stage == "resources" and trials[1].reason == "out of shared memory"
        assert db.winners() == [w]
        assert db.winners(gpu_name="NVIDIA A100") == []


def test_the_key_separates_token_counts_gpus_and_kernels(tmp_path):
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        for k in (
            dict(),
            dict(tokens=12000),
            dict(gpu="NVIDIA A100"),
            dict(kernel="flash_mhf_bwd_dq"),
        ):
            assert db.put_winner(winner(**k)) == "added"
        assert len(db.winners()) == 4


def test_replace_and_faster_policies(tmp_path):
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        db.put_winner(winner(ms=1.0))
        assert db.put_winner(winner(ms=2.0, config=Fwd(block_m=64)), "faster") == "kept"
        assert db.winners()[0].ms == 1.0
        assert db.put_winner(winner(ms=0.5, config=Fwd(block_m=32)), "faster") == "replaced"
        assert db.winners()[0].config.block_m == 32
        assert db.put_winner(winner(ms=3.0), "replace") == "replaced"
        assert [w.ms for w in db.winners()] == [3.0]
        with pytest.raises(ValueError):
            db.put_winner(winner(), "newest")


def test_read_only_open_of_a_missing_or_empty_file_is_empty(tmp_path):
    with TuningDB.open(tmp_path / "absent.sqlite", readonly=True) as db:
        assert db.winners() == [] and db.trials() == []
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with TuningDB.open(tmp_path / "empty.sqlite", readonly=True) as db:
        assert db.winners() == []
    assert not (tmp_path / "absent.sqlite").exists()


def test_corrupt_file_is_a_typed_one_line_error(tmp_path):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not sqlite at all" * 100)
    for readonly in (True, False):
        with pytest.raises(CorruptDatabaseError) as info:
            TuningDB.open(path, readonly=readonly)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    run_sql(path, "CREATE TABLE recipes (name TEXT)")
    with pytest.raises(ForeignDatabaseError, match="not an mhfgen tuning database"):
        TuningDB.open(path)
    run_sql(
        path,
        "CREATE TABLE meta (key TEXT, value TEXT)",
        "INSERT INTO meta VALUES ('format', 'someone-else')",
    )
    with pytest.raises(ForeignDatabaseError, match="someone-else"):
        TuningDB.open(path, readonly=True)


def test_newer_schema_is_refused_and_older_without_migration_too(tmp_path):
    path = tmp_path / "t.sqlite"
    TuningDB.open(path).close()
    run_sql(
        path, ("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    )
    with pytest.raises(SchemaVersionError, match="newer"):
        TuningDB.open(path, readonly=True)
    run_sql(path, "UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="no migration"):
        TuningDB.open(path)


def test_a_damaged_table_is_reported(tmp_path):
    path = tmp_path / "t.sqlite"
    TuningDB.open(path).close()
    run_sql(path, "DROP TABLE winners")
    with pytest.raises(CorruptDatabaseError, match="'winners' table is missing"):
        TuningDB.open(path, readonly=True)


def _writer(path: str, worker: int, n: int) -> None:
    with TuningDB.open(path) as db:
        for i in range(n):
            db.add_trial(
                TrialRecord(key(), Fwd(block_m=16 << (i % 4)), "ok", ms=1.0 + i, study=f"w{worker}")
            )
            db.put_winner(winner(ms=1.0 + (worker * n + i) % 7), policy="faster")


def test_two_processes_write_one_database_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    TuningDB.open(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with TuningDB.open(path, readonly=True) as db:
        trials = db.trials()
        assert len(trials) == 80
        assert {t.study for t in trials} == {"w0", "w1"}
        assert [w.ms for w in db.winners()] == [1.0]  # one key; the fastest kept


def test_layers_read_user_before_shipped_and_skip_a_broken_one(tmp_path, monkeypatch, caplog):
    user, shipped = tmp_path / "user.sqlite", tmp_path / "shipped.sqlite"
    with TuningDB.open(user) as db:
        db.put_winner(winner(ms=2.0))
    with TuningDB.open(shipped) as db:
        db.put_winner(winner(ms=1.0))
        db.put_winner(winner(ms=1.0, gpu="NVIDIA A100"))
    monkeypatch.setenv("MHFGEN_DB", str(user))
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: shipped)
    got = load_layered_winners("NVIDIA H200", "9.0", "3.6.0")
    assert [(layer, w.ms) for layer, w in got] == [("user", 2.0), ("shipped", 1.0)]

    user.write_bytes(b"garbage" * 200)
    with caplog.at_level(logging.WARNING):
        got = load_layered_winners("NVIDIA H200", "9.0", "3.6.0")
    assert [(layer, w.ms) for layer, w in got] == [("shipped", 1.0)]
    assert "ignoring the user tuning database" in caplog.text


def test_an_unreadable_config_row_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "t.sqlite"
    with TuningDB.open(path) as db:
        db.put_winner(winner())
        db.put_winner(dataclasses.replace(winner(tokens=100, bucket=128)))
        db.db.execute("UPDATE winners SET config = '{\"block_mm\": 1}' WHERE tokens = 100")
    with caplog.at_level(logging.WARNING), TuningDB.open(path, readonly=True) as db:
        assert len(db.winners()) == 1
    assert "unreadable winner" in caplog.text


def _legacy_file(path, version: int):
    """A database as mhfgen wrote it at schema `version` (1: no code_hash column; 1 and 2:
    a `kernel` column instead of op and variant, configs as 13-field JSON)."""
    with TuningDB.open(path) as db:
        db.put_winner(
            dataclasses.replace(winner(config=Fwd(block_m=128, tma=True)), code_hash="c0de")
        )
        db.add_trial(
            TrialRecord(
                key(kernel="flash_mhf_bwd_dkv"),
                Dkv(token_splits=2, transpose_acc=True),
                "ok",
                ms=2.0,
            )
        )
    legacy = {
        "flash_mhf_fwd": {"block_m": 128, "tma": True},
        "flash_mhf_bwd_dkv": {"token_splits": 2, "transpose_acc": True},
    }
    statements = ["DROP INDEX winners_key", "DROP INDEX trials_problem"]
    for table in ("winners", "trials"):
        statements += [
            f"ALTER TABLE {table} RENAME COLUMN variant TO kernel",
            f"ALTER TABLE {table} DROP COLUMN op",
        ]
        statements += [
            (
                f"UPDATE {table} SET config = ? WHERE kernel = ?",
                [json.dumps({**SCHEMA2_FIELDS, **c}, sort_keys=True), k],
            )
            for k, c in legacy.items()
        ]
    statements.append(
        "CREATE UNIQUE INDEX winners_key ON winners (kernel, template_hash, "
        "heads, kv_heads, head_dim, experts, expert_dim, dtype, bucket, tokens, "
        "gpu_name, compute_capability, triton_version)"
    )
    if version == 1:
        statements.append("ALTER TABLE winners DROP COLUMN code_hash")
    statements.append(("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)]))
    run_sql(path, *statements)


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_file_is_read_through_a_migrated_copy_and_upgraded_when_written(tmp_path, version):
    from mhfgen.variants import flash_mhf_bwd_dkv, flash_mhf_fwd

    path = tmp_path / "t.sqlite"
    _legacy_file(path, version)
    with TuningDB.open(path, readonly=True) as db:  # read-only: the file is not written
        assert db.old_schema == version
        (w,) = db.winners()
        assert (w.key.op, w.key.variant, w.key.kernel) == ("fwd", "flash_mhf_fwd", "flash_mhf_fwd")
        assert w.config == flash_mhf_fwd.Config(block_m=128, tma=True)
        assert w.code_hash == (None if version == 1 else "c0de") and w.ms == 1.0
        (t,) = db.trials(kernel="flash_mhf_bwd_dkv")
        assert t.key.op == "bwd_dkv"
        assert t.config == flash_mhf_bwd_dkv.Config(token_splits=2, transpose_acc=True)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(version),
    )
    conn.close()
    with TuningDB.open(path) as db:  # writable: migrated in place
        assert {"op", "variant", "code_hash"} <= set(db.db["winners"].columns_dict)
        assert "kernel" not in db.db["trials"].columns_dict
        db.put_winner(dataclasses.replace(winner(ms=0.5), code_hash="abc"), policy="faster")
        (w,) = db.winners(op="fwd")
        assert (w.ms, w.code_hash, w.key.variant) == (0.5, "abc", "flash_mhf_fwd")
        (t,) = db.trials(variant="flash_mhf_bwd_dkv")
        assert t.config == flash_mhf_bwd_dkv.Config(token_splits=2, transpose_acc=True)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    stored = {row[0] for row in conn.execute("SELECT config FROM trials")}
    conn.close()
    # rewritten as the variant's own fields: nothing of the 13-field union is left
    assert stored == {flash_mhf_bwd_dkv.Config(token_splits=2, transpose_acc=True).to_json()}


def test_the_shipped_database_is_current_schema():
    from mhfgen import paths

    conn = sqlite3.connect(f"file:{paths.shipped_db_path()}?mode=ro", uri=True)
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(winners)")}
    finally:
        conn.close()
    assert version == (str(SCHEMA_VERSION),) and {"op", "variant"} <= columns


def test_every_shipped_winner_runs_the_code_it_was_tuned_with():
    """A template edit (a new knob, a branch a stored config does not take) may change a
    variant's template hash but not the code generated for a stored config: dispatch
    would silently skip such a winner (mhfgen.tuning.lookup.still_current)."""
    from mhfgen import paths
    from mhfgen.codegen import template_hash
    from mhfgen.tuning.db import TuningDB
    from mhfgen.tuning.lookup import still_current

    with TuningDB.open(paths.shipped_db_path(), readonly=True) as db:
        records = list(db.winners())
    assert len(records) >= 100
    hashes = {rec.key.variant: template_hash(rec.key.variant) for rec in records}
    stale = [
        f"{rec.key.variant} {rec.key.spec_fields()} {rec.key.tokens}"
        for rec in records
        if not still_current(rec, hashes)
    ]
    assert stale == []


def test_every_shipped_winner_is_a_config_its_variant_accepts_today():
    """A config a variant now refuses (a resource rule, a knob disabled for wrong outputs)
    must leave the shipped database with the change that refuses it."""
    from mhfgen import paths, registry
    from mhfgen.tuning.db import TuningDB

    with TuningDB.open(paths.shipped_db_path(), readonly=True) as db:
        records = list(db.winners())
    refused = []
    for rec in records:
        k = rec.key
        reason = registry.get(k.variant).prune_reason(k.spec(), rec.config, k.tokens, 132)
        if reason:
            refused.append(f"{k.variant} {k.spec_fields()} {k.tokens}: {reason}")
    assert refused == []
