"""The database commands on hostile files and paths: explicit paths that do not exist, a
character device, a damaged page, a full disk, a database deleted while `tune` runs,
re-imports, values that mean something else, and what `list` prints."""

import copy
import json
import sqlite3

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from test_db_hardening import _with_trials, corrupt_trials_page
from test_import_strict import _bad, export_doc, winner  # noqa: F401 - the fixture
from tuning_helpers import SPEC_370M, recording, run_sql

from mhfgen.cli import main
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.exchange import ExchangeError, parse_export
from mhfgen.tuning.problem import TuningProblem

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


@pytest.fixture(autouse=True)
def _no_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")


def one_line_error(capsys, *parts) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err
    return err


def _export_file(tmp_path, doc) -> str:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(doc))
    return str(path)


# -- explicit paths -------------------------------------------------------------------------
def test_import_into_a_missing_folder_creates_no_folder(export_doc, tmp_path, capsys):
    source = _export_file(tmp_path, export_doc)
    target = tmp_path / "nonexistent" / "dir" / "x.sqlite"
    assert main(["import", source, "--db", str(target)]) == 2
    one_line_error(capsys, "does not exist", "creates the database file, not its folders")
    assert not (tmp_path / "nonexistent").exists()
    # a new file in a folder that exists is created
    assert main(["import", source, "--db", str(tmp_path / "new.sqlite")]) == 0
    assert "3 added" in capsys.readouterr().out


def test_tune_into_a_missing_folder_creates_no_folder(tmp_path, capsys):
    target = tmp_path / "nonexistent" / "x.sqlite"
    assert (
        main(["tune", "--no-progress", "--db", str(target), "--kernels", "fwd", "--trials", "1"])
        == 2
    )
    one_line_error(capsys, "does not exist")
    assert not target.parent.exists()


@pytest.mark.parametrize(
    "command", [["list"], ["show", "--heads", "2", "--head-dim", "32"], ["export", "-o", "-"]]
)
def test_read_commands_on_an_explicit_path_that_does_not_exist(tmp_path, capsys, command):
    typo = tmp_path / "typo.sqlite"
    assert main([*command, "--db", str(typo)]) == 2
    one_line_error(capsys, "no such tuning database")
    assert not typo.exists()


# -- not a regular file ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["import", "EXPORT"],
        ["list"],
        ["tune", "--no-progress", "--kernels", "fwd", "--trials", "1"],
    ],
)
def test_a_character_device_as_db_is_one_line(export_doc, tmp_path, capsys, command):
    command = [_export_file(tmp_path, export_doc) if c == "EXPORT" else c for c in command]
    assert main([*command, "--db", "/dev/null"]) == 2
    one_line_error(capsys, "/dev/null is a character device")


# -- a damaged page -------------------------------------------------------------------------
def test_import_into_a_file_with_a_damaged_page_writes_nothing(export_doc, tmp_path, capsys):
    path = tmp_path / "t.sqlite"
    _with_trials(path)
    corrupt_trials_page(path)
    before = path.read_bytes()
    assert main(["import", _export_file(tmp_path, export_doc), "--db", str(path)]) == 2
    one_line_error(capsys, "is damaged (SQLite's quick_check:")
    assert path.read_bytes() == before


def test_tune_into_a_file_with_a_damaged_page_is_one_line(tmp_path, capsys):
    path = tmp_path / "t.sqlite"
    _with_trials(path)
    corrupt_trials_page(path)
    assert (
        main(["tune", "--no-progress", "--db", str(path), "--kernels", "fwd", "--trials", "1"]) == 2
    )
    one_line_error(capsys, "is damaged")


def test_show_of_a_file_with_a_damaged_page_is_one_line(tmp_path, capsys):
    path = tmp_path / "t.sqlite"
    _with_trials(path)
    corrupt_trials_page(path)
    assert main(["show", "--preset", "370M", "--gpu", "NVIDIA H200", "--db", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before anything is printed
    assert len(err.strip().splitlines()) == 1 and "is damaged (SQLite's quick_check:" in err


def test_doctor_fails_on_a_damaged_user_database(tmp_path, monkeypatch, capsys):
    path = tmp_path / "user.sqlite"
    monkeypatch.setenv("MHFGEN_DB", str(path))
    assert main(["doctor"]) == 0  # absent is fine
    assert "absent" in capsys.readouterr().out
    _with_trials(path)
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["user_db_ok"] is True and doc["user_db_state"] == "1 tuned config(s)"
    corrupt_trials_page(path)
    assert main(["doctor"]) == 1
    out, err = capsys.readouterr()
    assert "damaged (SQLite's quick_check:" in out
    assert len(err.strip().splitlines()) == 1 and "is unusable" in err
    path.write_bytes(b"not sqlite" * 100)
    assert main(["doctor"]) == 1
    assert "is not a usable SQLite file" in capsys.readouterr().err


# -- a full disk and a deleted file during a tune ----------------------------------------------
REPLAY_PROBLEM = [
    "--preset",
    "370M",
    "--tokens",
    "16384",
    "--no-progress",
    "--kernels",
    "flash_mhf_fwd",
    "--strategy",
    "grid",
    "--trials",
    "40",
]


@pytest.fixture
def replay_file(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text(
        json.dumps(recording(TuningProblem(SPEC_370M, 16384), kernels=["flash_mhf_fwd"]))
    )
    return str(path)


def test_a_disk_that_fills_mid_tune_is_one_line(tmp_path, capsys, monkeypatch, replay_file):
    path = tmp_path / "t.sqlite"
    real_open = dbmod.TuningDB.open.__func__

    def capped(cls, p, readonly=False, **kwargs):
        db = real_open(cls, p, readonly, **kwargs)
        if not readonly:  # the file may not grow by a page more: full
            db.db.execute("PRAGMA max_page_count = 1")
        return db

    monkeypatch.setattr(dbmod.TuningDB, "open", classmethod(capped))
    code = main(["tune", "--replay", replay_file, *REPLAY_PROBLEM, "--db", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert line.startswith("mhfgen tune: error: ") and "the disk is full" in line
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    monkeypatch.undo()
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")
    assert main(["tune", "--replay", replay_file, *REPLAY_PROBLEM, "--db", str(path)]) == 0
    assert "stored in" in capsys.readouterr().out
    with TuningDB.open(path, readonly=True) as db:
        assert len(db.winners()) == 1 and len(db.trials()) >= 40


def test_tune_does_not_say_stored_when_the_database_was_deleted(
    tmp_path, capsys, monkeypatch, replay_file
):
    from mhfgen.tuning import search

    path = tmp_path / "t.sqlite"
    real_finish = search.Tuner.finish

    def finish(self, kernel, study):
        path.unlink()  # deleted while the tune runs: the open connection writes on
        return real_finish(self, kernel, study)

    monkeypatch.setattr(search.Tuner, "finish", finish)
    assert main(["tune", "--replay", replay_file, *REPLAY_PROBLEM, "--db", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "stored in" not in out
    assert "no longer exists" in err and len(err.strip().splitlines()) >= 1
    assert not path.exists()


# -- re-imports and values that mean something else ---------------------------------------------
def test_reimporting_identical_records_says_already_stored(export_doc, tmp_path, capsys):
    source = _export_file(tmp_path, export_doc)
    target = str(tmp_path / "t.sqlite")
    assert main(["import", source, "--db", target]) == 0
    assert "3 added" in capsys.readouterr().out
    assert main(["import", source, "--db", target]) == 0
    out = capsys.readouterr().out
    assert "0 added" in out and "3 already stored" in out and "0 kept" in out


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("op", "bwd_dq", "op 'bwd_dq' is not the op of variant flash_mhf_fwd ('fwd')"),
        ("tflops", False, "tflops must be a number"),
        ("tflops", "", "tflops must be a number"),
        ("tflops", [], "tflops must be a number"),
        ("trials", False, "trials must be an integer"),
        ("trials", "", "trials must be an integer"),
        ("trials", [], "trials must be an integer"),
        ("timer", False, "timer must be a string"),
        ("timer", [], "timer must be a string"),
        ("code_hash", "", "code_hash must be a non-empty string"),
        ("code_hash", False, "code_hash must be a string"),
        ("created", [], "created must be a string"),
        ("created", False, "created must be a string"),
        ("compute_capability", "abc", "compute_capability must be 'MAJOR.MINOR'"),
        ("gpu_name", "NVIDIA \x1b[31mH200\x1b[0m", "gpu_name must be printable text"),
        ("timer", "GPU\x1b]0;pwned\x07", "timer must be printable text"),
    ],
)
def test_values_that_mean_something_else_are_refused(
    export_doc, tmp_path, capsys, field, value, message
):
    doc = _bad(export_doc, 1, field, value)
    target = tmp_path / "t.sqlite"
    assert main(["import", _export_file(tmp_path, doc), "--db", str(target)]) == 2
    err = one_line_error(capsys, "record 1: ", message)
    assert "\x1b" not in err
    with pytest.raises(ExchangeError, match="^record 1: "):
        parse_export(doc)


@pytest.mark.parametrize("version", [-1, 0])
def test_an_export_schema_below_1_is_refused(export_doc, tmp_path, capsys, version):
    doc = dict(copy.deepcopy(export_doc), schema_version=version)
    assert main(["import", _export_file(tmp_path, doc), "--db", str(tmp_path / "t.sqlite")]) == 2
    one_line_error(capsys, f"'schema_version' must be 1..3, got {version}")


def test_a_stored_row_of_two_ops_is_not_listed_under_the_wrong_one(tmp_path, capsys, caplog):
    path = tmp_path / "t.sqlite"
    with TuningDB.open(path) as db:
        db.put_winner(winner())
    run_sql(path, "UPDATE winners SET op = 'bwd_dq'")
    assert main(["list", "--db", str(path), "--kernel", "dq"]) == 0
    out = capsys.readouterr().out
    assert "flash_mhf_fwd" not in out
    with TuningDB.open(path, readonly=True) as db:
        assert db.winners(op="bwd_dq") == []  # skipped with a warning, not shown as dq
    assert "is not the op of variant" in caplog.text


def test_list_prints_no_escape_codes_and_no_empty_column(tmp_path, capsys):
    path = tmp_path / "t.sqlite"
    with TuningDB.open(path) as db:
        db.put_winner(winner())
    assert main(["list", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.strip().startswith("kernel"))
    assert header.split()[-1] == "config", header  # no column without a name or a value
    run_sql(path, "UPDATE winners SET triton_version = 'x\x1b[2J\x1b[31m'")
    assert main(["list", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out


def test_table_cells_escape_terminal_codes():
    from mhfgen.cli.output import printable, table

    assert printable("a\x1b[31mb\x07") == "a\\x1b[31mb\\x07"
    assert "\x1b" not in table(["gpu"], [["NVIDIA \x1b[31mH200"]])
