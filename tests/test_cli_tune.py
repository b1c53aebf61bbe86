"""`mhfgen tune` end to end: the README's main job on the CPU (a tiny problem through
Triton's interpreter), replay, interruption and resumption, and its one-line errors."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from cases import KERNELS

from mhfgen.cli import main
from mhfgen.cli.tune import CPU_TRIALS
from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.search import PAUSE_ENV

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fresh_dispatch")


def test_bare_tune_on_the_cpu_is_the_main_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "cache"))  # no study to resume
    record = tmp_path / "timings.json"
    assert main(["tune", "--no-progress", "--record", str(record)]) == 0
    out, err = capsys.readouterr()
    assert "NOT GPU timings" in err and "NOT GPU timings" in out
    assert "H=2 Hkv=1 D=32 I=64 E=2 (De=32) float32, 32 tokens" in out
    for kernel in KERNELS:
        row = next(line for line in out.splitlines() if line.startswith(kernel))
        assert "x" in row and "none passed" not in row  # a speed-up over the default
    assert "forward + backward:" in out
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        winners = db.winners()
        assert {w.key.kernel for w in winners} == set(KERNELS)
        assert {(w.key.gpu_name, w.key.compute_capability) for w in winners} == {
            ("interpreter", "none")
        }
        assert all(w.speedup > 0 and w.default_ms > 0 for w in winners)
        assert len(db.trials()) == 3 * CPU_TRIALS

    # the recorded timings replay the run without launching anything
    other = tmp_path / "replayed.sqlite"
    assert main(["tune", "--no-progress", "--replay", str(record), "--db", str(other)]) in (0, 1)
    out = capsys.readouterr().out
    assert "replayed: interpreter wall clock" in out
    with TuningDB.open(other, readonly=True) as db:
        assert len(db.winners()) == 3


def _run(args, env):
    return subprocess.Popen(
        [sys.executable, "-c", "from mhfgen.cli import main; main()", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_and_rerun_resumes_without_losing_trials(tmp_path):
    """Deterministic: the tuner pauses itself after its third stored trial (the testing
    hook of mhfgen.tuning.search.PAUSE_ENV) and is killed there, not after a timer."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        MHFGEN_DB=str(tmp_path / "t.sqlite"),
        MHFGEN_CACHE_DIR=str(tmp_path / "cache"),
    )
    args = ["tune", "--kernels", "fwd", "--trials", "8", "--batch", "2", "--no-progress"]
    proc = _run(args, {**env, PAUSE_ENV: "3"})
    seen = []
    for line in proc.stderr:  # blocks until the pause line, or EOF if the tuner died
        seen.append(line)
        if "paused after 3 trials" in line:
            break
    assert proc.poll() is None, "".join(seen) + proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    with TuningDB.open(tmp_path / "t.sqlite", readonly=True) as db:
        before = {t.config for t in db.trials()}
        assert len(db.trials()) == 3 and len(before) == 3 and not db.winners()

    proc = _run(args, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Resuming: 3 configs already evaluated" in err
    with TuningDB.open(tmp_path / "t.sqlite", readonly=True) as db:
        trials = db.trials()
        assert len(trials) == 8 and len({t.config for t in trials}) == 8
        assert before <= {t.config for t in trials}
        assert len(db.winners()) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dtype", "bfloat16"], "bfloat16 does not run in Triton's interpreter"),
        (["--kernels", "fwd,bwdx"], "unknown kernel 'bwdx'"),
        (["--intermediate", "100", "--experts", "3"], "must be divisible by --experts"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--heads", "3", "--kv-heads", "2"], "multiple of kv_heads"),
        (["--hang-timeout", "-1"], "--hang-timeout must be >= 0 (0: no limit)"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message, capsys):
    assert main(["tune", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_corrupt_database_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"\x00garbage" * 100)
    assert main(["tune", "--no-progress", "--db", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a usable SQLite file" in err and len(err.splitlines()) == 1
