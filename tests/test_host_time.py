"""benchmarks/host_time.py runs without a GPU (--stub) and writes its figures as JSON.

In a child process: --stub patches the device target and the launch for the whole
process, which must not leak into other tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_stub_run_writes_every_figure(tmp_path):
    out = tmp_path / "host.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "host_time.py"), "--stub", "--calls", "2"]
    done = subprocess.run(
        [*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["device"] == "CPU, launches stubbed" and "lm_step" not in doc
    figures = doc["host_us_per_call"]
    assert set(figures) == {
        "forward",
        "backward",
        "flash_mhf fwd+bwd (eager)",
        "flash_mhf fwd+bwd (custom op)",
        "norm_router fwd",
        "norm_router bwd",
    }
    assert all(us > 0 for us in figures.values())
    assert "backward" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its timings")
def test_without_a_gpu_or_stub_it_says_how(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "host_time.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "pass --stub" in done.stderr
