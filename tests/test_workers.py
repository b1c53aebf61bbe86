"""Tuning with several worker processes through one shared Optuna study, without a GPU:
replayed timings and Triton's interpreter, a journal file and a real PostgreSQL server
(started by .ci/run; skipped where MHFGEN_TEST_POSTGRES_URL is not set). Every config is
evaluated once by one worker, every trial stored once, one winner per kernel, and the
database equals the one a single process stores from the same recorded timings. At run
time the config is a pure function of the database, the spec, the shape and the GPU."""

import collections
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import optuna
import pytest
from cases import KERNELS, Fwd
from tuning_helpers import H200, SPEC_370M, recording

from mhfgen import registry
from mhfgen.cli import main
from mhfgen.spec import KernelSpec
from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.problem import TuningProblem
from mhfgen.tuning.search import SearchSettings, Tuner
from mhfgen.tuning.study import (
    HOST,
    STALE_S,
    _with_postgres_driver,
    journal_path,
    redact,
    storage_for,
)
from mhfgen.tuning.timer import ReplayTimer

FWD, DQ, DKV = KERNELS
ROOT = Path(__file__).resolve().parents[1]
PROBLEM = TuningProblem(SPEC_370M, 16384)
CLI_PROBLEM = ["--preset", "370M", "--tokens", "16384", "--no-progress"]


pytestmark = pytest.mark.usefixtures("fresh_dispatch")


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped after it."""
    base = os.environ.get("MHFGEN_TEST_POSTGRES_URL")
    if not base:
        pytest.skip(
            "MHFGEN_TEST_POSTGRES_URL is not set: no PostgreSQL server to test "
            "against (.ci/run starts one and sets it)"
        )
    import psycopg2  # in CI a missing driver fails the test rather than skipping it

    name = f"mhfgen_t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(base)
    admin.autocommit = True
    try:
        admin.cursor().execute(f"CREATE DATABASE {name}")
        yield f"{base.rsplit('/', 1)[0]}/{name}"
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


def _storage(kind, tmp_path, request):
    if kind == "journal":
        return f"journal:{tmp_path / 'study.journal'}"
    return request.getfixturevalue("postgres_url")


def _failing_recording():
    """Recorded timings of the 370M problem's fwd and dq grids; a few fwd configs fail
    at different stages."""
    clean = recording(PROBLEM, kernels=[FWD, DQ])
    fwd = sorted((r for r in clean["records"] if r["kernel"] == FWD), key=lambda r: r["ms"])
    parse = registry.get(FWD).config_from_dict
    failures = {
        (FWD, parse(r["config"])): (stage, f"{stage} in the test")
        for r, stage in zip(fwd[5::20], ("compile", "wrong answer", "timeout"))
    }
    return recording(PROBLEM, kernels=[FWD, DQ], failures=failures)


def contents(path):
    """A database's trials and winners, without what differs between two runs of the
    same search (row ids, dates, study names and trial numbers)."""
    with TuningDB.open(path, readonly=True) as db:
        trials = sorted(
            (
                json.dumps(t.key.as_dict()),
                t.config.to_json(),
                t.status,
                t.stage,
                t.reason,
                t.ms,
                t.tflops,
                t.error,
                t.timer,
            )
            for t in db.trials()
        )
        winners = sorted(
            (
                json.dumps(w.key.as_dict()),
                w.config.to_json(),
                w.ms,
                w.tflops,
                w.default_ms,
                w.speedup,
                w.timer,
                w.trials,
            )
            for w in db.winners()
        )
    return trials, winners


def study_trials(storage_url):
    """kernel -> the FrozenTrials of its study in `storage_url`."""
    storage = storage_for(storage_url)
    out = {}
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        out[json.loads(name.split("#")[0])[0]] = study.get_trials(deepcopy=False)
    return out


def evaluated(trials):
    return [
        t
        for t in trials
        if t.user_attrs.get("config")
        and (
            t.state == optuna.trial.TrialState.COMPLETE
            or t.user_attrs.get("stage") not in (None, "pruned", "duplicate", "surplus")
        )
    ]


# NOTE: PostgreSQL costs Optuna about 0.1 s per trial here (a transaction per parameter);
# its run searches one grid of the two. The kernels are named by their Triton-language
# variants: on the replayed H200 `fwd` and `dq` would be the joint studies of both
# variants of each op, and the recording covers these.
@pytest.mark.parametrize(
    "backend,kernels",
    [("journal", "flash_mhf_fwd,flash_mhf_bwd_dq"), ("postgres", "flash_mhf_fwd")],
)
def test_three_workers_store_what_one_process_stores(backend, kernels, tmp_path, request):
    storage = _storage(backend, tmp_path, request)
    rec = tmp_path / "timings.json"
    rec.write_text(json.dumps(_failing_recording()))
    args = [
        "tune",
        "--replay",
        str(rec),
        *CLI_PROBLEM,
        "--kernels",
        kernels,
        "--strategy",
        "grid",
        "--trials",
        "10000",
        "--batch",
        "8",
    ]
    single, multi = tmp_path / "single.sqlite", tmp_path / "multi.sqlite"
    assert main([*args, "--db", str(single)]) == 0
    assert main([*args, "--db", str(multi), "--workers", "3", "--storage", storage]) == 0

    assert contents(multi) == contents(single)
    trials, winners = contents(multi)
    tuner = Tuner(PROBLEM, H200, None, None)
    names = kernels.split(",")
    assert len(trials) == sum(len(tuner.grid(k)) for k in names)  # none lost
    assert len({t[:2] for t in trials}) == len(trials)  # none twice
    assert sorted(t[3] for t in trials if t[2] == "failed") == [
        "compile",
        "timeout",
        "wrong answer",
    ]
    assert len(winners) == len(names)
    for kernel, study in study_trials(storage).items():
        done = evaluated(study)
        assert len(done) == len(tuner.grid(kernel))
        assert len({t.user_attrs["config"] for t in done}) == len(done)
        workers = collections.Counter(t.user_attrs["worker"] for t in done)
        assert len(workers) >= 2, workers  # the candidates were split among the workers


@pytest.mark.parametrize("backend", ["journal", "postgres"])
def test_tpe_workers_spend_exactly_the_budget_and_declare_one_winner(backend, tmp_path, request):
    storage = _storage(backend, tmp_path, request)
    rec = tmp_path / "timings.json"
    rec.write_text(json.dumps(recording(PROBLEM)))
    db = tmp_path / "t.sqlite"
    assert (
        main(
            [
                "tune",
                "--replay",
                str(rec),
                *CLI_PROBLEM,
                "--trials",
                "20",
                "--batch",
                "4",
                "--kernels",
                ",".join(KERNELS),  # the Triton-language forward (see above)
                "--workers",
                "3",
                "--storage",
                storage,
                "--db",
                str(db),
            ]
        )
        == 0
    )
    studies = study_trials(storage)
    assert set(studies) == set(KERNELS)
    with TuningDB.open(db, readonly=True) as tdb:
        for kernel, study in studies.items():
            done = evaluated(study)
            assert len(done) == 20 and len({t.user_attrs["config"] for t in done}) == 20
            stored = tdb.trials(kernel=kernel)
            assert sorted(t.config.to_json() for t in stored) == sorted(
                t.user_attrs["config"] for t in done
            )
            assert sorted(t.trial_number for t in stored) == sorted(t.number for t in done)
            (winner,) = tdb.winners(kernel=kernel)
            assert winner.trials == 20
            assert winner.ms == pytest.approx(min(t.ms for t in stored))
            (declared,) = [
                s.user_attrs["declared"]
                for s in [
                    optuna.load_study(study_name=n, storage=storage_for(storage))
                    for n in optuna.get_all_study_names(storage_for(storage))
                ]
                if json.loads(s.study_name)[0] == kernel
            ]
            assert declared["config"] == winner.config.to_json()
            assert len(declared["side_by_side"]) >= 2  # re-timed against the others


def test_interpreter_workers_share_a_journal_study(tmp_path, capsys):
    storage = f"journal:{tmp_path / 'study.journal'}"
    db = tmp_path / "t.sqlite"
    assert (
        main(
            [
                "tune",
                "--no-progress",
                "--kernels",
                "fwd",
                "--trials",
                "6",
                "--batch",
                "2",
                "--workers",
                "2",
                "--storage",
                storage,
                "--db",
                str(db),
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "with 2 workers" in err and "NOT GPU timings" in out
    done = evaluated(study_trials(storage)[FWD])
    assert len(done) == 6 and len({t.user_attrs["config"] for t in done}) == 6
    assert all(not t.user_attrs["worker"].endswith(f":{os.getpid()}") for t in done)
    with TuningDB.open(db, readonly=True) as tdb:
        trials = tdb.trials()
        assert len(trials) == 6 and len({t.config for t in trials}) == 6
        assert all(t.timer.startswith("interpreter wall clock") for t in trials)
        (winner,) = tdb.winners()
        assert winner.key.gpu_name == "interpreter" and winner.trials == 6


def test_a_second_host_stores_the_same_trials_and_winner_without_timing(tmp_path):
    rec = recording(PROBLEM, kernels=[DQ])
    storage = f"journal:{tmp_path / 'study.journal'}"
    settings = SearchSettings(trials=12, batch=4)
    with TuningDB.open(tmp_path / "a.sqlite") as a:
        Tuner(PROBLEM, H200, ReplayTimer(rec), a, settings, storage, shared=True).tune([DQ])
    late = ReplayTimer(rec)
    with TuningDB.open(tmp_path / "b.sqlite") as b:
        (result,) = Tuner(PROBLEM, H200, late, b, settings, storage, shared=True, worker=1).tune(
            [DQ]
        )
    assert late.calls == {}  # the study was complete and its winner declared
    assert contents(tmp_path / "b.sqlite") == contents(tmp_path / "a.sqlite")
    assert len(contents(tmp_path / "a.sqlite")[0]) == 12
    with TuningDB.open(tmp_path / "a.sqlite") as a:  # finishing again adds nothing
        Tuner(PROBLEM, H200, ReplayTimer(rec), a, settings, storage, shared=True).tune([DQ])
    assert len(contents(tmp_path / "a.sqlite")[0]) == 12


def _dead_pid():
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_stale_claims_are_retried_and_live_ones_waited_for(tmp_path):
    rec = recording(PROBLEM, kernels=[FWD])
    storage = f"journal:{tmp_path / 'study.journal'}"
    settings = SearchSettings(trials=8, batch=4)
    other = Tuner(
        PROBLEM, H200, ReplayTimer(rec), None, settings, storage, shared=True, worker=1
    ).open_study(FWD)
    dead, old, live = other.ask_batch(3)
    forge = [
        (dead, {"worker": f"{HOST}:{_dead_pid()}"}),
        (old, {"worker": "elsewhere/pid:[1]:42", "heartbeat": time.time() - STALE_S - 9}),
        (live, {"worker": "elsewhere/pid:[1]:43", "heartbeat": time.time()}),
    ]
    for asked, attrs in forge:
        for key, value in attrs.items():
            other.storage.set_trial_user_attr(asked.trial._trial_id, key, value)

    tuner = Tuner(
        PROBLEM, H200, ReplayTimer(rec), None, settings, storage, shared=True, poll_s=0.01
    )
    study = tuner.open_study(FWD)  # another process: the three are not its own
    assert study.in_flight() == 1  # the dead worker's and the silent one's were failed
    assert tuner.search_kernel(FWD, study) is False  # the rest is the live claim's
    assert study.evaluated_count() == 7
    other.tell_time(live, 0.5)
    assert tuner.search_kernel(FWD, study) is True
    states = {t.number: t for t in study.study.get_trials(deepcopy=False)}
    for asked in (dead, old):
        t = states[asked.number]
        assert t.state == optuna.trial.TrialState.FAIL and "stage" not in t.user_attrs
    done = evaluated(states.values())
    assert len(done) == 8 and len({t.user_attrs["config"] for t in done}) == 8


def test_claims_of_one_config_at_the_same_moment_both_give_way(tmp_path):
    rec = recording(PROBLEM, kernels=[FWD])
    storage = f"journal:{tmp_path / 'study.journal'}"
    a, b = (
        Tuner(
            PROBLEM, H200, ReplayTimer(rec), None, SearchSettings(), storage, shared=True, worker=w
        ).open_study(FWD)
        for w in (0, 1)
    )
    config = a.grid[3]
    ta, tb = a._ask(config), b._ask(config)
    ta.set_user_attr("config", config.to_json())
    tb.set_user_attr("config", config.to_json())
    assert a._check_claim(ta.number, config.to_json(), None) == "conflict"
    assert b._check_claim(tb.number, config.to_json(), None) == "conflict"
    a._skip(ta, "duplicate", "claimed at the same time")  # what ask_batch does then
    b._skip(tb, "duplicate", "claimed at the same time")
    # one after the other: the second sees the first's claim and asks something else
    first = a.ask_batch(2)
    second = b.ask_batch(2, limit=3)
    keys = {x.config.to_json() for x in first}
    assert len(second) == 1 and not keys & {x.config.to_json() for x in second}
    stages = collections.Counter(
        t.user_attrs.get("stage") for t in b.study.get_trials(deepcopy=False)
    )
    assert stages["surplus"] == 1  # the budget of 3 was filled by the earlier trials


def test_fresh_starts_a_new_generation_whose_trials_are_all_stored(tmp_path):
    rec = recording(PROBLEM, kernels=[FWD])
    storage = f"journal:{tmp_path / 'study.journal'}"
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        for fresh in (False, True):
            Tuner(
                PROBLEM,
                H200,
                ReplayTimer(rec),
                db,
                SearchSettings(trials=4, batch=2, fresh=fresh),
                storage,
                shared=True,
            ).tune([FWD])
        trials = db.trials()
    assert len(trials) == 8
    names = {t.study for t in trials}
    assert len(names) == 2 and any(n.endswith("#1") for n in names)
    assert optuna.get_all_study_names(storage_for(storage)) == [
        n for n in names if n.endswith("#1")
    ]


def test_storage_urls():
    assert journal_path("journal:///tmp/a.log") == "/tmp/a.log"
    assert journal_path("journal:rel/a.log") == "rel/a.log"
    assert journal_path("/mnt/nfs/study.log") == "/mnt/nfs/study.log"
    assert journal_path("postgresql://u:p@h/db") is None
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert _with_postgres_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert _with_postgres_driver("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert _with_postgres_driver("mysql://u@h/db") == "mysql://u@h/db"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (
            ["--storage", "postgresql://nobody:hunter2@127.0.0.1:1/none"],
            "--storage postgresql://nobody:***@127.0.0.1:1",
        ),
    ],
)
def test_bad_worker_flags_are_one_line_errors(args, message, capsys):
    assert main(["tune", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "hunter2" not in err


# -- at run time: the choice is a pure function of the database, spec, shape and GPU ----
CHOOSE = r"""
import json, sys
import mhfgen, torch, triton, triton.testing
from mhfgen import dispatch
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tuning.db import load_layered_winners
from mhfgen.tuning.lookup import TunedIndex
KERNELS = ("flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv")

def no_timing(*args, **kwargs):
    raise AssertionError("something was timed at run time")

triton.testing.do_bench = no_timing
out = {}
for gpu, cc, target in (("NVIDIA H200", "9.0", "sm90"), ("NVIDIA A100-SXM4-80GB", "8.0", "sm80")):
    index = TunedIndex(load_layered_winners(gpu, cc, triton.__version__),
                       {k: template_hash(k) for k in KERNELS})
    spec = KernelSpec(4, 4, 64, 2, 128, "bfloat16", target)
    for tokens in (1024, 1000, 8192, 1 << 20):
        c = index.find("flash_mhf_fwd", spec, tokens)
        out[f"{gpu} {tokens}"] = [c.source, c.tuned_tokens, c.config.to_json()]
spec = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
for tokens in (32, 40, 7):
    c = dispatch.explain_choice("flash_mhf_fwd", spec, tokens, torch.device("cpu"))
    out[f"cpu {tokens}"] = [c.source, c.tuned_tokens, c.config.to_json()]
assert not {"optuna", "mhfgen.tuning.timer", "mhfgen.tuning.search"} & set(sys.modules)
print(json.dumps(out, sort_keys=True))
"""


def _tuned_db(path):
    """Winners of one spec on two GPUs and the interpreter, plus faster trials that must
    not matter (dispatch reads winners only)."""
    import triton

    from mhfgen.codegen import template_hash
    from mhfgen.tuning.buckets import shape_bucket
    from mhfgen.tuning.db import TrialRecord, TuningKey, WinnerRecord

    configs = {}
    with TuningDB.open(path) as db:
        for gpu, cc, spec, tokens, block in (
            ("NVIDIA H200", "9.0", KernelSpec(4, 4, 64, 2, 128, "bfloat16", "sm90"), 1024, 64),
            ("NVIDIA H200", "9.0", KernelSpec(4, 4, 64, 2, 128, "bfloat16", "sm90"), 8192, 128),
            (
                "NVIDIA A100-SXM4-80GB",
                "8.0",
                KernelSpec(4, 4, 64, 2, 128, "bfloat16", "sm80"),
                1024,
                32,
            ),
            ("interpreter", "none", KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter"), 32, 16),
        ):
            key = TuningKey.of(
                FWD,
                template_hash(FWD),
                spec,
                shape_bucket(tokens),
                tokens,
                gpu,
                cc,
                triton.__version__,
            )
            config = registry.get(FWD).Config(block_m=block, block_n=32)
            configs[(gpu, tokens)] = config
            db.put_winner(WinnerRecord(key, config, 1.0, 1.0, 2.0, 2.0, "test", 4, "", "", ""))
            db.add_trial(TrialRecord(key, Fwd(block_m=16, block_n=16), "ok", ms=0.01))
    return configs


def test_runtime_choice_is_a_pure_function_of_the_database(tmp_path):
    tuned = tmp_path / "tuned.sqlite"
    configs = _tuned_db(tuned)
    shipped = tmp_path / "ship" / "job.sqlite"  # another path, read-only: what a job gets
    shipped.parent.mkdir()
    shutil.copy(tuned, shipped)
    shipped.chmod(0o444)
    runs = []
    for i, db in enumerate((tuned, shipped)):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            MHFGEN_DB=str(db),
            MHFGEN_CACHE_DIR=str(tmp_path / f"cache{i}"),
            PYTHONHASHSEED=str(i),
        )
        runs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHOOSE],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(json.loads(out))
    assert outs[0] == outs[1]
    got = outs[0]
    h200, a100 = "NVIDIA H200", "NVIDIA A100-SXM4-80GB"
    assert got[f"{h200} 1024"] == ["exact", 1024, configs[(h200, 1024)].to_json()]
    assert got[f"{h200} 1000"][:2] == ["bucket", 1024]
    assert got[f"{h200} 8192"] == ["exact", 8192, configs[(h200, 8192)].to_json()]
    assert got[f"{h200} {1 << 20}"][:2] == ["nearest", 8192]
    assert got[f"{a100} 1024"] == ["exact", 1024, configs[(a100, 1024)].to_json()]
    assert got[f"{a100} 8192"][:2] == ["nearest", 1024]  # the A100's own record, not the H200's
    assert got["cpu 32"] == ["exact", 32, configs[("interpreter", 32)].to_json()]
    assert got["cpu 40"][:2] == ["nearest", 32]
    assert got["cpu 7"][:2] == ["nearest", 32]


def test_a_database_on_a_read_only_file_system_is_read(tmp_path):
    """A WAL-mode database file cannot be opened read-only where SQLite cannot create its
    -shm file; a database shipped in a read-only image must still be read."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    _tuned_db(src / "job.sqlite")
    if (
        subprocess.run(
            ["mount", "--bind", "-o", "ro", str(src), str(mnt)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot make a read-only bind mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True)
        if (
            os.access(mnt, os.W_OK)
            and subprocess.run(["touch", str(mnt / "probe")], capture_output=True).returncode == 0
        ):
            pytest.skip("the bind mount is writable here")
        with TuningDB.open(mnt / "job.sqlite", readonly=True) as db:
            assert len(db.winners()) == 4 and len(db.trials()) == 4
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_workers_throughput_script_smoke(tmp_path, capsys):
    """benchmarks/workers_throughput.py end to end on the CPU (its figures mean nothing
    here and say so), so it does not rot before its run on two GPUs."""
    import importlib.util

    path = ROOT / "benchmarks" / "workers_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_workers_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path), "--cpu-smoke", "--trials", "3"]) == 0
    text = (tmp_path / "workers_throughput.md").read_text()
    assert "NOT GPU timings" in text and "| 2 | 3 |" in text and "| 1 | 3 |" in text
    data = json.loads((tmp_path / "workers_throughput.json").read_text())
    assert [r["workers"] for r in data["runs"]] == [1, 2]
    assert all(r["evaluated"] == r["stored_trials"] == 3 for r in data["runs"])
    assert data["environment"]["gpu"]["gpu_name"] == "interpreter"
