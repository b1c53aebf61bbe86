"""The scaffolding the GPU check scripts share (benchmarks/hangs.py: result rows, the
watched run), on the CPU with the GPU's name faked; and that every check script using it
imports (they run only on an H100/H200)."""

import importlib
import sys
import threading
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def hangs(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FAKE GPU")
    return importlib.import_module("hangs")


def test_attempt_makes_rows_of_results_and_errors_and_reraises_hangs(hangs, capsys):
    rows = []
    hangs.attempt(rows, "speed", "ok case", lambda: ("1.0 ms", "fine"))
    hangs.attempt(rows, "speed", "bad case", lambda: 1 / 0)
    assert rows == [
        ("speed", "ok case", "1.0 ms", "fine"),
        ("speed", "bad case", "-", "ERROR ZeroDivisionError: division by zero"),
    ]

    def hang():
        raise hangs.Hang("no completion")

    with pytest.raises(hangs.Hang):
        hangs.attempt(rows, "verify", "stuck", hang)
    assert rows[-1] == ("verify", "stuck", "-", "HANG")
    assert "ok case 1.0 ms fine" in capsys.readouterr().out


def test_run_watched_reports_the_rows_and_returns_the_steps_result(hangs, capsys):
    def steps(rows):
        hangs.row(rows, "verify", "case", "2.3e-03", "ok")
        return "done"

    assert hangs.run_watched(steps, budget_s=60) == "done"
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("FAKE GPU torch ")
    assert "| verify | case | 2.3e-03 | ok |" in out and "wall " in out
    reports = []
    assert hangs.run_watched(lambda rows: 3, 60, report=lambda r, t0: reports.append(r)) == 3
    assert reports == [[]]


def test_a_hang_reports_and_exits_2(hangs, monkeypatch):
    def exit_(code):  # os._exit never returns
        raise SystemExit(code)

    monkeypatch.setattr(hangs.os, "_exit", exit_)
    reported = []

    def steps(rows):
        hangs.row(rows, "speed", "x", "-", "HANG")
        raise hangs.Hang("stuck")

    with pytest.raises(SystemExit) as stop:
        hangs.run_watched(steps, 60, report=lambda r, t0: reported.append(list(r)))
    assert stop.value.code == 2
    assert reported == [[("speed", "x", "-", "HANG")]]
    # the watchdog is off: it must not fire later in this process
    assert not [
        t
        for t in threading.enumerate()
        if isinstance(t, threading.Timer) and t.is_alive() and not t.finished.is_set()
    ]


@pytest.mark.parametrize(
    "script",
    ["gluon_fwd_check", "bwd_ws_check", "bwd_dkv_ws_check", "bwd_dq_ws_check", "fp8_fwd_check"],
)
def test_every_check_script_imports(script, hangs):
    module = importlib.import_module(script)
    assert callable(module.main)
    sys.modules.pop(script, None)
