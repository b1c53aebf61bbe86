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


def test_the_one_pass_check_writes_a_results_fragment_the_renderer_adds(hangs, tmp_path):
    """bwd_ws_check --json: its speed and diagnose records become results tables (ratio:
    the split pair's time over the row's) that render_performance --add-tables merges
    into the GPU's results file."""
    check = importlib.import_module("bwd_ws_check")
    render = importlib.import_module("render_performance")
    unit = 1e9  # FLOPs of one GEMM unit: 6 units in 1 ms are 6 TFLOP/s
    records = [
        dict(
            shape="1.3B",
            what="split pair (dispatched)",
            ms=1.0,
            split_ms=1.0,
            fwd_ms=0.5,
            unit=unit,
        ),
        dict(shape="1.3B", what="s2 wg32 vec hc1", ms=0.8, split_ms=1.0, fwd_ms=0.5, unit=unit),
        dict(shape="1.3B", what="vec hc16, no dq reductions", ms=0.5, unit=unit, diagnose=True),
    ]
    fragment = check.results_fragment(
        "FAKE GPU", "flash_mhf_bwdt_ws", 2048, (35, 36), records, "python3 benchmarks/x.py"
    )
    speed = fragment["tables"]["one-pass-flash_mhf_bwdt_ws-2048"]
    assert "35 of 36" in speed["title"]
    bwd = [r for r in speed["rows"] if r["metric"] == "backward"]
    assert [(r["row"], r["value"], r["ratio"]) for r in bwd] == [
        ("1.3B, split pair (dispatched)", 6, 1.0),
        ("1.3B, s2 wg32 vec hc1", 8, 1.25),
    ]
    total = [r["value"] for r in speed["rows"] if r["metric"] == "forward + backward"]
    assert total == [6, 7]  # 9 units over 1.5 and 1.3 ms
    diag = fragment["tables"]["one-pass-flash_mhf_bwdt_ws-2048-diagnose"]["rows"]
    assert diag == [
        {
            "row": "1.3B, vec hc16, no dq reductions",
            "metric": "backward",
            "value": 12,
            "unit": "TFLOP/s",
        }
    ]
    path = tmp_path / "fragment.json"
    path.write_text(check.json.dumps(fragment))
    written = render.add_tables(path, tmp_path)
    doc = check.json.loads(written.read_text())
    assert doc["gpu"] == "FAKE GPU" and set(doc["tables"]) == set(fragment["tables"])
    assert "| 1.3B, s2 wg32 vec hc1 | 8 (1.25x) | 7 |" in render.render_table(
        doc, "one-pass-flash_mhf_bwdt_ws-2048"
    )
    sys.modules.pop("bwd_ws_check", None)
