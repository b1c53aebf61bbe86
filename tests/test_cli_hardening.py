"""The command line on bad paths, bad flags, closed pipes and a second tuner: one line
saying what is wrong, checked before any work, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from cases import TINY_FLAGS

from mhfgen.cli import main
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.db import TuningDB, TuningDBError

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_FLAGS, "--tokens", "32"]

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


@pytest.fixture(autouse=True)
def _no_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")


def one_line_error(capsys, *parts) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    return err


def _not_writable(monkeypatch, *paths):
    """Make `paths` unwritable: chmod, and where that means nothing (root ignores it)
    the permission check itself reports them unwritable."""
    for p in paths:
        os.chmod(p, 0o555 if Path(p).is_dir() else 0o444)
    if os.geteuid() == 0:
        real = os.access
        blocked = {str(Path(p)) for p in paths}
        monkeypatch.setattr(
            dbmod.os, "access", lambda p, mode: False if str(Path(p)) in blocked else real(p, mode)
        )


# -- database paths ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", [["list"], ["show", *TINY], ["export", "-o", "-"], ["tune", "--no-progress", *TINY]]
)
def test_a_database_path_that_is_a_folder_is_one_line(tmp_path, capsys, command):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main([*command, "--db", str(folder)]) == 2
    one_line_error(capsys, "is a directory, not a tuning database file")


def test_tune_into_a_read_only_database_stops_before_searching(tmp_path, capsys, monkeypatch):
    path = tmp_path / "ro.sqlite"
    TuningDB.open(path).close()
    _not_writable(monkeypatch, path)
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["tune", "--no-progress", *TINY, "--db", str(path)]) == 2
    err = one_line_error(capsys, str(path), "read-only")
    assert "delete" not in err
    assert not (tmp_path / "cache" / "studies").exists() or not any(
        (tmp_path / "cache" / "studies").glob("*.sqlite")
    )  # no search started


def test_a_valid_database_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "t.sqlite"
    TuningDB.open(path).close()
    _not_writable(monkeypatch, folder)
    try:
        # reading it works: list says what it holds
        assert main(["list", "--db", str(path)]) == 0
        assert "0 tuned config(s)" in capsys.readouterr().out
        # writing it is refused, saying the folder is the problem, not the file
        export = tmp_path / "e.json"
        export.write_text('{"format": "mhfgen-tuning-export", "schema_version": 1, "records": []}')
        assert main(["import", str(export), "--db", str(path)]) == 2
        err = one_line_error(capsys, f"{folder} is not writable", "journal")
        assert "not a usable SQLite file" not in err and "delete" not in err
    finally:
        os.chmod(folder, 0o755)


def test_a_file_sqlite_opens_read_only_is_caught_by_the_write_probe(tmp_path, monkeypatch):
    """Whatever makes SQLite open a file read-only (a read-only mount, say), a writable
    open fails at once with the reason, not at the first write of a result."""
    path = tmp_path / "t.sqlite"
    TuningDB.open(path).close()
    real = dbmod.sqlite3.connect

    def read_only(database, *args, **kw):
        return real(f"file:{database}?mode=ro", *args, uri=True, **kw)

    monkeypatch.setattr(dbmod.sqlite3, "connect", read_only)
    with pytest.raises(TuningDBError, match="cannot be written .*readonly"):
        TuningDB.open(path)


# -- flags -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["tune", "show", "codegen", "bench"])
@pytest.mark.parametrize(
    "flag", ["--heads", "--kv-heads", "--head-dim", "--intermediate", "--experts"]
)
def test_zero_sizes_are_errors_not_defaults(command, flag, capsys):
    assert main([command, flag, "0"]) == 2
    one_line_error(capsys, f"{flag} must be >= 1, got 0")


def test_list_and_export_name_an_unknown_kernel(capsys):
    assert main(["list", "--kernel", "nope"]) == 2
    one_line_error(capsys, "unknown kernel 'nope'", "flash_mhf_fwd")
    assert main(["export", "-o", "-", "--kernel", "nope"]) == 2
    one_line_error(capsys, "unknown kernel 'nope'")


@pytest.mark.parametrize("flags", [["--presets", "128M"], ["--tokens", "4096"]])
def test_verify_gpu_flags_are_refused_on_the_cpu(flags, capsys):
    assert main(["verify", *flags]) == 2
    one_line_error(capsys, f"{flags[0]} needs a GPU")


# -- a closed stdout ---------------------------------------------------------------------
@pytest.mark.parametrize("command", [["list"], ["codegen", *TINY[:-2]], ["tune", "--help"]])
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, command):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MHFGEN_DB=str(tmp_path / "t.sqlite"))
    proc = subprocess.Popen(
        [sys.executable, "cli.py", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line (| head -0)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# -- two tuners of one problem -----------------------------------------------------------
def test_a_second_tune_of_the_same_problem_is_refused_while_the_first_runs(
    tmp_path, capsys, monkeypatch
):
    """Deterministic: the first tuner's lock is held here (as a running `mhfgen tune`
    holds it) while a second one starts; nothing is evaluated twice and no trial of the
    first is failed. Once released, tuning proceeds."""
    import torch

    from mhfgen.cli.tune import CPU_PROBLEM
    from mhfgen.device import target
    from mhfgen.spec import KernelSpec
    from mhfgen.tuning.problem import DeviceFacts, TuningProblem
    from mhfgen.tuning.search import storage_path, study_storage_url
    from mhfgen.tuning.study import study_lock

    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "cache"))
    spec = KernelSpec(2, 1, 32, 2, 32, "float32", target(torch.device("cpu")))
    assert CPU_PROBLEM["tokens"] == 32
    url = study_storage_url(TuningProblem(spec, 32), DeviceFacts.of(torch.device("cpu")))
    args = ["tune", "--no-progress", "--kernels", "fwd", "--trials", "2", *TINY]
    with study_lock(storage_path(url)):
        assert main(args) == 2
        one_line_error(
            capsys, f"pid {os.getpid()}", "is tuning this problem already", "--storage", "--workers"
        )
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        assert db.trials() == []
    assert main(args) == 0
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        assert len(db.trials()) == 2


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--tokens", "0"], "--tokens must be >= 1, got 0"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    ],
)
def test_tune_counts_of_zero_are_errors_not_defaults(flags, message, capsys):
    assert main(["tune", "--no-progress", *TINY[:-2], *flags]) == 2
    one_line_error(capsys, message)


def test_verify_json_into_a_missing_folder_is_refused_before_checking(tmp_path, capsys):
    assert main(["verify", "--json", str(tmp_path / "no" / "such" / "v.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--json: cannot write" in err and len(err.strip().splitlines()) == 1


def test_on_a_read_only_file_system_reads_work_and_writes_are_refused_up_front(tmp_path, capsys):
    """A real read-only mount (where this machine allows a bind mount): `list` reads the
    database, `import` and `tune` say it is read-only before doing anything."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    TuningDB.open(src / "t.sqlite").close()
    if (
        subprocess.run(
            ["mount", "--bind", "-o", "ro", str(src), str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot make a read-only bind mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True)
        if os.access(mnt, os.W_OK):
            pytest.skip("the bind mount is writable here")
        path = mnt / "t.sqlite"
        assert main(["list", "--db", str(path)]) == 0
        assert "0 tuned config(s)" in capsys.readouterr().out
        export = tmp_path / "e.json"
        export.write_text('{"format": "mhfgen-tuning-export", "schema_version": 1, "records": []}')
        assert main(["import", str(export), "--db", str(path)]) == 2
        err = one_line_error(capsys, "read-only")
        assert "delete" not in err
        assert main(["tune", "--no-progress", *TINY, "--db", str(path)]) == 2
        one_line_error(capsys, "read-only")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
