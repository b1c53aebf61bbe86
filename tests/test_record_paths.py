"""MHFGEN_RECORD and `mhfgen tune --from-record` take regular files only: a FIFO, a
device, a folder or a missing folder is refused in one line instead of hanging or
creating folders, and a record file that is not JSON is an error, not a torn line."""

import json
import logging
import os
import threading

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch

from mhfgen import dispatch, record
from mhfgen.cli import main
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod

CPU = torch.device("cpu")
SPEC = KernelSpec(2, 2, 16, 2, 16, "float32", "interpreter")
FWD = "flash_mhf_fwd"
#: seconds a call may take before it counts as hanging
LIMIT = 60


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")
    for name in ("MHFGEN_NO_TUNED", record.RECORD_ENV, record.TUNE_ON_MISS_ENV):
        monkeypatch.delenv(name, raising=False)
    record.forget_seen()
    yield
    record.forget_seen()


def within_limit(fn, fifo=None):
    """fn()'s result, run in a thread; a call still running after LIMIT seconds fails
    the test (and, where it waits on `fifo`, is let go by opening its other end)."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(LIMIT)
    if thread.is_alive():
        if fifo is not None:  # unblock a writer waiting for a reader, then fail
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            thread.join(10)
            os.close(fd)
        pytest.fail(f"still running after {LIMIT} s: it hangs")
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_fifo_as_record_path_is_refused_with_one_warning_not_a_hang(
    tmp_path, monkeypatch, caplog
):
    fifo = tmp_path / "rec.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv(record.RECORD_ENV, str(fifo))
    caplog.set_level(logging.WARNING)

    def calls():
        return [dispatch.explain_choice(FWD, SPEC, t, CPU).source for t in (90, 91, 5000)]

    assert within_limit(calls, fifo) == ["heuristic"] * 3  # the calls go on unrecorded
    warnings = [r.getMessage() for r in caplog.records if "cannot record" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per path, not per key
    assert "is a FIFO, not a regular file" in warnings[0] and "\n" not in warnings[0]


def test_a_fifo_behind_a_symlink_is_refused(tmp_path, monkeypatch, caplog):
    os.mkfifo(tmp_path / "rec.fifo")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "rec.fifo")
    monkeypatch.setenv(record.RECORD_ENV, str(tmp_path / "link.jsonl"))
    assert (
        within_limit(
            lambda: dispatch.explain_choice(FWD, SPEC, 90, CPU).source, tmp_path / "rec.fifo"
        )
        == "heuristic"
    )
    assert "is a FIFO" in caplog.text


@pytest.mark.parametrize(
    "where, said",
    [("folder", "is a folder"), ("device", "is a device"), ("missing", "does not exist")],
)
def test_record_paths_that_are_not_files_are_refused(where, said, tmp_path, monkeypatch, caplog):
    if where == "folder":
        path = tmp_path / "dir"
        path.mkdir()
    elif where == "device":
        path = "/dev/null"
    else:
        path = tmp_path / "no" / "such" / "rec.jsonl"
    monkeypatch.setenv(record.RECORD_ENV, str(path))
    assert within_limit(lambda: dispatch.explain_choice(FWD, SPEC, 90, CPU).source) == "heuristic"
    assert said in caplog.text
    assert not (tmp_path / "no").exists()  # folders are not created


def test_a_regular_file_and_a_new_file_in_a_folder_still_record(tmp_path, monkeypatch):
    path = tmp_path / "rec.jsonl"
    monkeypatch.setenv(record.RECORD_ENV, str(path))
    dispatch.explain_choice(FWD, SPEC, 90, CPU)  # created
    dispatch.explain_choice(FWD, SPEC, 91, CPU)  # appended
    assert [json.loads(t)["tokens"] for t in path.read_text().splitlines()] == [90, 91]


def test_tune_from_a_fifo_is_a_one_line_error_not_a_hang(tmp_path, capsys):
    fifo = tmp_path / "rec.fifo"
    os.mkfifo(fifo)
    assert within_limit(lambda: main(["tune", "--from-record", str(fifo)]), fifo) == 2
    err = capsys.readouterr().err.strip()
    assert "is a FIFO, not a regular file" in err and len(err.splitlines()) == 1


def _record_line(tokens=7):
    return json.dumps(
        dict(
            kernel=FWD,
            **SPEC.as_dict(),
            tokens=tokens,
            gpu_name="interpreter",
            compute_capability="none",
        )
    )


@pytest.mark.parametrize("text", ["notjson", "notjson\n", '{"kernel": "fl', "[1, 2", "\x00\x01"])
def test_a_one_line_record_file_that_is_not_json_is_an_error(text, tmp_path, capsys):
    path = tmp_path / "rec.jsonl"
    path.write_text(text)
    assert main(["tune", "--from-record", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}, line 1: not a JSON line" in err and len(err.splitlines()) == 1
    assert "torn" not in err


def test_a_last_line_that_is_not_json_nor_a_torn_record_is_an_error(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text(_record_line() + "\nnotjson")
    with pytest.raises(record.RecordError, match="line 2: not a JSON line"):
        record.read_records(path)
    path.write_text(_record_line() + "\n" + _record_line(9)[:30] + "\n")  # it has its newline
    with pytest.raises(record.RecordError, match="line 2: not a JSON line"):
        record.read_records(path)
    path.write_text(_record_line() + "\n" + _record_line(9)[:30])  # torn: skipped
    assert [r["tokens"] for r in record.read_records(path)] == [7]


def test_a_record_file_that_is_not_utf8_or_nested_too_deep_is_one_line(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\xff\xfe" + _record_line().encode())
    with pytest.raises(record.RecordError, match="not UTF-8"):
        record.read_records(path)
    path.write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(record.RecordError, match="line 1"):
        record.read_records(path)
    path.write_text(_record_line().replace('"tokens": 7', '"tokens": true') + "\n")
    with pytest.raises(record.RecordError, match="tokens must be a positive int"):
        record.read_records(path)
