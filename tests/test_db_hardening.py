"""The tuning database under a hostile machine: writers racing a migration, a writer
killed mid-transaction, corrupt pages, a lock held past the busy timeout, a full disk,
a character device as the file."""

import multiprocessing
import os
import signal
import sqlite3
import time

import pytest
from test_tuning_db import _legacy_file, key, winner

from mhfgen.tuning import db as dbmod
from mhfgen.tuning.db import CorruptDatabaseError, TrialRecord, TuningDB, TuningDBError
from mhfgen.variants.flash_mhf_fwd import Config as Fwd


def _fork():
    return multiprocessing.get_context("fork")


def _open_and_write(path: str, barrier, worker: int) -> None:
    barrier.wait()
    with TuningDB.open(path) as db:
        db.put_winner(winner(ms=1.0 + worker), policy="faster")
        db.add_trial(TrialRecord(key(), Fwd(), "ok", ms=1.0, study=f"w{worker}"))


def test_two_writers_racing_on_an_older_schema_both_succeed(tmp_path):
    """The schema version is read again inside the migration's write lock: the second
    writer finds the file migrated and does not run the step again (it used to fail with
    'no such column: kernel')."""
    ctx = _fork()
    for attempt in range(6):
        path = str(tmp_path / f"old{attempt}.sqlite")
        _legacy_file(path, 2)
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_open_and_write, args=(path, barrier, w)) for w in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0], f"attempt {attempt}"
        with TuningDB.open(path, readonly=True) as db:
            assert db.old_schema is None
            assert [w.ms for w in db.winners()] == [1.0]
            assert {t.study for t in db.trials()} >= {"w0", "w1", "w2"}


# -- a writer killed mid-transaction -------------------------------------------------------
def _batches(path: str, ready) -> None:
    """Winners in transactions of 50 records each, for ever (killed by the test)."""
    with TuningDB.open(path) as db:
        batch = 0
        while True:
            records = [winner(tokens=100_000 + batch * 50 + i, bucket=131072) for i in range(50)]
            db.put_winners(records)
            batch += 1
            if batch == 3:
                ready.set()


def _held_open(path: str, ready) -> None:
    """Two committed winners, then a third inside a transaction that never commits."""
    with TuningDB.open(path) as db:
        db.put_winners([winner(tokens=t, bucket=128) for t in (100, 101)])
        with db.transaction():
            db.db["winners"].insert(winner(tokens=102, bucket=128).to_row())
            db.db["trials"].insert(TrialRecord(key(), Fwd(), "ok", ms=1.0).to_row())
            ready.set()
            time.sleep(600)


def _integrity(path) -> list:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    finally:
        conn.close()


def test_sigkill_of_a_writer_mid_transaction_leaves_a_sound_file(tmp_path):
    """SIGKILL (no handler runs, nothing is flushed or rolled back by Python) inside an
    open write transaction: the file passes integrity_check, holds exactly what was
    committed, and the next writer opens it (quick_check) and writes."""
    ctx = _fork()
    path = str(tmp_path / "t.sqlite")
    ready = ctx.Event()
    proc = ctx.Process(target=_held_open, args=(path, ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert _integrity(path) == ["ok"]
    with TuningDB.open(path) as db:  # writable: quick_check passes, the lock is free
        assert sorted(w.key.tokens for w in db.winners()) == [100, 101]
        assert db.trials() == []
        db.put_winner(winner(tokens=102, bucket=128))
        assert len(db.winners()) == 3


def test_sigkill_during_batches_of_writes_keeps_whole_batches(tmp_path):
    """Killed at an arbitrary point of a stream of 50-record transactions: the winners
    recounted are a whole number of batches, and the file is sound."""
    ctx = _fork()
    for attempt in range(3):
        path = str(tmp_path / f"t{attempt}.sqlite")
        ready = ctx.Event()
        proc = ctx.Process(target=_batches, args=(path, ready))
        proc.start()
        assert ready.wait(60)
        time.sleep(0.05 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert _integrity(path) == ["ok"]
        with TuningDB.open(path) as db:
            count = len(db.winners())
        assert count >= 150 and count % 50 == 0, count


# -- corrupt pages ------------------------------------------------------------------------
def _with_trials(path, n: int = 400) -> None:
    with TuningDB.open(path) as db:
        db.put_winner(winner())
        db.add_trials(
            [
                TrialRecord(
                    key(), Fwd(block_m=16 << (i % 4)), "ok", ms=1.0 + i, study="s", trial_number=i
                )
                for i in range(n)
            ]
        )


def corrupt_trials_page(path) -> None:
    """Garbage over a page of the `trials` table of a real database file (its root page,
    an interior b-tree page once it holds a few hundred trials)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'trials'"
        ).fetchone()
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()
    assert root > 1
    garbage = bytes((i * 37 + 11) % 256 for i in range(page_size))
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(garbage)


def test_a_corrupt_page_is_found_when_opened_for_writing(tmp_path):
    path = tmp_path / "t.sqlite"
    _with_trials(path)
    corrupt_trials_page(path)
    before = path.read_bytes()
    with pytest.raises(CorruptDatabaseError) as info:
        TuningDB.open(path)
    message = str(info.value)
    assert "is damaged (SQLite's quick_check: " in message and "\n" not in message
    assert path.read_bytes() == before  # nothing written into the damaged file


# -- an expired busy timeout ---------------------------------------------------------------
def _hold_the_write_lock(path, seconds: float, held):
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_a_write_outlives_an_expired_busy_timeout_and_says_so(tmp_path, monkeypatch, caplog):
    """Another writer holds the lock past SQLite's busy timeout: the trial is stored after
    retries with a growing pause, each one logged, instead of 'database is locked'."""
    import logging
    import threading

    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(dbmod, "WRITE_RETRY_FIRST_S", 0.1)
    path = str(tmp_path / "t.sqlite")
    db = TuningDB.open(path)
    held = threading.Event()
    holder = threading.Thread(target=_hold_the_write_lock, args=(path, 1.5, held))
    holder.start()
    assert held.wait(10)
    try:
        with caplog.at_level(logging.WARNING):
            assert db.add_trial(TrialRecord(key(), Fwd(), "ok", ms=1.0))
    finally:
        holder.join()
    assert len(db.trials()) == 1
    db.close()
    assert "is locked by another writer" in caplog.text and "retrying in" in caplog.text
    assert "got the write lock after" in caplog.text


def test_a_lock_held_past_the_whole_wait_is_one_line(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_S", 0.1)
    monkeypatch.setattr(dbmod, "WRITE_RETRY_FIRST_S", 0.1)
    monkeypatch.setattr(dbmod, "WRITE_WAIT_S", 0.5)
    path = str(tmp_path / "t.sqlite")
    db = TuningDB.open(path)
    held = threading.Event()
    holder = threading.Thread(target=_hold_the_write_lock, args=(path, 2.0, held))
    holder.start()
    assert held.wait(10)
    try:
        with pytest.raises(dbmod.DatabaseBusyError, match="still locked by another writer"):
            db.add_trial(TrialRecord(key(), Fwd(), "ok", ms=1.0))
    finally:
        holder.join()
    assert db.add_trial(TrialRecord(key(), Fwd(), "ok", ms=1.0))  # free again
    db.close()


# -- disk full ------------------------------------------------------------------------------
@pytest.fixture(params=["tmpfs", "max_page_count"])
def small_disk(request, tmp_path, monkeypatch):
    """A folder whose disk fills up on demand: a 256 KiB tmpfs filled to its last byte
    (where this test may mount one), and SQLite's max_page_count (a cap on the file's
    size, set on every connection) everywhere. Yields (folder, fill)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if request.param == "tmpfs":
        if not subprocess_ok(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]):
            pytest.skip("no tmpfs can be mounted here")

        def fill():
            try:
                with open(mount / "filler", "wb", buffering=0) as f:
                    while True:
                        f.write(b"\0" * 512)
            except OSError:
                pass

        try:
            yield mount, fill
        finally:
            subprocess_ok(["umount", "-l", str(mount)])
        return
    real = sqlite3.connect
    full = {"on": False}
    opened = []

    def cap(conn):  # never below the pages the file has: it is full from here on
        try:
            conn.execute("PRAGMA max_page_count = 1")
        except sqlite3.ProgrammingError:  # closed
            pass

    def connect(*args, **kwargs):
        conn = real(*args, **kwargs)
        opened.append(conn)
        if full["on"]:
            cap(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)

    def fill():
        full["on"] = True
        for conn in opened:
            cap(conn)

    yield mount, fill


def subprocess_ok(command) -> bool:
    import subprocess

    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_new_database_on_a_full_disk_is_one_line(small_disk):
    folder, fill = small_disk
    fill()
    with pytest.raises(TuningDBError) as info:
        TuningDB.open(folder / "new.sqlite")
    assert "the disk is full" in str(info.value) and "\n" not in str(info.value)


def test_a_disk_that_fills_mid_write_keeps_what_was_stored(small_disk):
    folder, fill = small_disk
    path = folder / "t.sqlite"
    db = TuningDB.open(path)
    db.add_trials([TrialRecord(key(), Fwd(), "ok", ms=1.0 + i, trial_number=i) for i in range(3)])
    fill()
    with pytest.raises(dbmod.StorageFullError, match="nothing of this write was stored"):
        for i in range(2000):  # until a page more is needed
            db.add_trials([TrialRecord(key(), Fwd(), "ok", ms=10.0 + i, reason="x" * 2000)])
    db.close()
    assert _integrity(str(path)) == ["ok"]
    with TuningDB.open(path, readonly=True) as db:
        assert {t.trial_number for t in db.trials()} >= {0, 1, 2}


# -- not a regular file ---------------------------------------------------------------------
@pytest.mark.parametrize("readonly", [False, True])
def test_a_character_device_is_not_a_database(readonly):
    with pytest.raises(TuningDBError, match="is a character device, not a tuning database"):
        TuningDB.open("/dev/null", readonly=readonly)


# -- what the docs say of the shipped database -------------------------------------------------
def test_tuning_md_counts_the_shipped_winners():
    """docs/TUNING.md's counts of the shipped winners are those of the file."""
    import re
    from collections import Counter
    from pathlib import Path

    from mhfgen import paths

    text = " ".join(
        (Path(__file__).resolve().parents[1] / "docs" / "TUNING.md").read_text().split()
    )
    para = text[text.index("The shipped database `tuning_db/tuning.sqlite` holds") :]
    para = para[: para.index("dispatch takes the faster")]
    with TuningDB.open(paths.shipped_db_path(), readonly=True) as db:
        every = db.winners()
    assert int(re.search(r"holds (\d+) winners", para).group(1)) == len(every)
    by_gpu = Counter(
        (w.key.gpu_name, w.key.compute_capability, w.key.triton_version) for w in every
    )
    for (name, cc, triton), n in by_gpu.items():
        assert f"{n} of the {name} (compute capability {cc}, Triton {triton})" in para
    # the shapes and per-variant counts are the main GPU's (the one with most winners)
    main = by_gpu.most_common(1)[0][0]
    winners = [
        w for w in every if (w.key.gpu_name, w.key.compute_capability, w.key.triton_version) == main
    ]
    shapes = {(w.key.spec_fields(), w.key.tokens) for w in winners}
    assert int(re.search(r"cover (\d+) shapes", para).group(1)) == len(shapes)
    per_op = {
        op: {(w.key.spec_fields(), w.key.tokens) for w in winners if w.key.op == op}
        for op in {w.key.op for w in winners}
    }
    assert len(per_op["fwd"]) == len(shapes)
    assert len(per_op["bwd_dq"]) == len(per_op["bwd_dkv"])
    assert f"dQ/dR and dK/dU/dV at {len(per_op['bwd_dq'])} of them" in para
    assert f"the one-pass backward at {len(per_op['bwd'])}." in para
    stated = {name: int(n) for n, name in re.findall(r"(\d+) `(flash_mhf_\w+)`", para)}
    assert stated == dict(Counter(w.key.variant for w in winners))
    pairs = Counter((w.key.op, w.key.spec_fields(), w.key.tokens) for w in winners)
    assert f"At {sum(n > 1 for n in pairs.values())} of the (op, shape) pairs" in para


# -- short write transactions --------------------------------------------------------------------
def test_records_are_prepared_before_the_write_lock_and_merged_in_order(tmp_path, monkeypatch):
    """put_winners converts every record before BEGIN IMMEDIATE (the lock is held for the
    indexed reads and bulk writes only), and records of one key in one call merge in
    order, as if put one by one."""
    path = tmp_path / "t.sqlite"
    db = TuningDB.open(path)
    db.put_winner(winner(ms=2.0, tokens=100, bucket=128))
    in_lock = {"on": False, "converted": 0}
    real_begin, real_to_row = TuningDB._begin, dbmod.WinnerRecord.to_row

    def begin(self):
        real_begin(self)
        in_lock["on"] = True

    def to_row(self):
        in_lock["converted"] += in_lock["on"]
        return real_to_row(self)

    monkeypatch.setattr(TuningDB, "_begin", begin)
    monkeypatch.setattr(dbmod.WinnerRecord, "to_row", to_row)
    same = db.winners()[0]
    records = [
        same,
        winner(ms=3.0, tokens=100, bucket=128),
        winner(ms=1.0, tokens=100, bucket=128),
        winner(ms=0.5, tokens=200, bucket=256),
        winner(ms=0.7, tokens=200, bucket=256),
        winner(ms=0.4, tokens=200, bucket=256),
    ]
    assert db.put_winners(records, "faster") == [
        "same",
        "kept",
        "replaced",
        "added",
        "kept",
        "replaced",
    ]
    assert in_lock["converted"] == 0
    monkeypatch.undo()
    assert sorted((w.key.tokens, w.ms) for w in db.winners()) == [(100, 1.0), (200, 0.4)]
    db.close()
