"""Watching a GPU kernel's first launches for a hang (an mbarrier deadlock never ends), and a
whole check run for its time budget, for the GPU check scripts of this folder
(gluon_fwd_check.py, bwd_ws_check.py, bwd_dkv_ws_check.py, bwd_dq_ws_check.py); with the
result rows they share."""

from __future__ import annotations

import os
import threading
import time

import torch


class Hang(Exception):
    """A launch that did not complete within its timeout: the CUDA context is unusable."""


def finish(fn, timeout_s: float = 20.0):
    """Run fn once and wait for the GPU with a timeout (a deadlocked kernel never ends)."""
    out = fn()
    event = torch.cuda.Event()
    event.record()
    t0 = time.time()
    while not event.query():
        if time.time() - t0 > timeout_s:
            raise Hang(f"no completion within {timeout_s:.0f} s")
        time.sleep(0.002)
    return out


def row(rows: list, *cells) -> None:
    """Append a result row and print it as it happens."""
    rows.append(cells)
    print(*cells, flush=True)


def attempt(rows: list, kind: str, label: str, fn) -> None:
    """fn() -> (value, note) as a row; a hang re-raises, any other error is a row."""
    try:
        value, note = fn()
        row(rows, kind, label, value, note)
    except Hang:
        row(rows, kind, label, "-", "HANG")
        raise
    except Exception as exc:  # noqa: BLE001 - a failing config is a row
        row(
            rows,
            kind,
            label,
            "-",
            f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:110] if str(exc) else ''}",
        )


def print_table(rows: list, t0: float) -> None:
    """The rows as a markdown table, then the wall time since t0."""
    print("\n## results")
    for cells in rows:
        print("|", " | ".join(cells), "|")
    print(f"wall {time.time() - t0:.0f} s", flush=True)


def run_watched(steps, budget_s: float, report=print_table):
    """steps(rows) under a watchdog, after a line naming the GPU and versions: once
    budget_s seconds have passed, report(rows, t0) and exit 3; on a Hang (the CUDA context
    is then unusable) report and exit 2; otherwise report and return steps' result."""
    import torch
    import triton

    print(
        f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}",
        flush=True,
    )
    rows, t0 = [], time.time()

    def watchdog():
        print("WATCHDOG: budget spent", flush=True)
        report(rows, t0)
        os._exit(3)

    timer = threading.Timer(budget_s, watchdog)
    timer.daemon = True
    timer.start()
    try:
        result = steps(rows)
    except Hang:
        timer.cancel()
        print("HANG: the CUDA context is unusable; stopping", flush=True)
        report(rows, t0)
        os._exit(2)
    timer.cancel()
    report(rows, t0)
    return result
