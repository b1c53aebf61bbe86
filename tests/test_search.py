"""The search, without a GPU: replayed timings drive the Optuna loop, the grid baseline,
failures, the database records, interruption and resumption; the interpreter checks
candidates against float64 and the compile pool runs in worker processes."""

import dataclasses
import json
import threading

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from cases import KERNELS, Dkv, Dq, Fwd
from tuning_helpers import H200, SPEC_370M, recording, synthetic_ms

from mhfgen import registry
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tuning.compile import CompilePool
from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.hang import HANG_EXIT, HangGuard, Hung
from mhfgen.tuning.outcome import Candidate
from mhfgen.tuning.problem import DeviceFacts, TuningProblem
from mhfgen.tuning.search import SearchSettings, Tuner, study_storage_url
from mhfgen.tuning.timer import CandidateFailed, InterpreterTimer, RecordingTimer, ReplayTimer
from mhfgen.tuning.workload import Workload

FWD, DQ, DKV = KERNELS
PROBLEM = TuningProblem(SPEC_370M, 16384)


def best_of(rec, kernel):
    return min(r["ms"] for r in rec["records"] if r["kernel"] == kernel and "ms" in r)


def tuner_for(rec, settings, db=None, storage=None, problem=PROBLEM, device=H200, timer=None):
    return Tuner(problem, device, timer or ReplayTimer(rec), db, settings, storage)


def test_optuna_reaches_the_grid_best_with_under_a_third_of_its_trials():
    rec = recording(PROBLEM, kernels=[FWD])
    grid = len(rec["records"])
    budget = int(0.3 * grid)
    result = tuner_for(rec, SearchSettings(trials=budget, batch=8, seed=3)).tune_kernel(FWD)
    assert result.evaluated == budget < grid
    assert best_of(rec, FWD) / result.ms >= 0.98


def test_grid_strategy_evaluates_every_valid_config_exactly_once():
    rec = recording(PROBLEM, kernels=[DKV])
    timer = ReplayTimer(rec)
    tuner = tuner_for(
        rec, SearchSettings(trials=10_000, batch=16, strategy="grid", rounds=2), timer=timer
    )
    result = tuner.tune_kernel(DKV)
    assert result.evaluated == result.grid_size == len(tuner.grid(DKV))
    assert result.ms == pytest.approx(best_of(rec, DKV))
    finalists = {c for c, _ in result.side_by_side}
    for candidate, calls in timer.calls.items():
        assert calls == (1 + 2 if candidate.config in finalists else 1), candidate


def test_a_config_is_never_timed_twice_during_the_search():
    rec = recording(PROBLEM, kernels=[DQ])
    timer = ReplayTimer(rec)
    settings = SearchSettings(trials=30, batch=8, rounds=3, top_k=3)
    result = tuner_for(rec, settings, timer=timer).tune_kernel(DQ)
    finalists = {c for c, _ in result.side_by_side}
    assert len(finalists) <= settings.top_k + 1  # + the default
    assert sum(timer.calls.values()) == 30 + 3 * len(finalists)
    assert all(n == 1 for c, n in timer.calls.items() if c.config not in finalists)


def test_failures_become_failed_trials_with_their_reason(tmp_path):
    clean = recording(PROBLEM, kernels=[FWD])
    ranked = sorted((r for r in clean["records"]), key=lambda r: r["ms"])
    configs = [registry.get(FWD).config_from_dict(r["config"]) for r in ranked[:4]]
    stages = ["wrong answer", "compile", "resources", "timeout"]
    failures = {(FWD, c): (stage, f"{stage} in the test") for c, stage in zip(configs, stages)}
    rec = recording(PROBLEM, kernels=[FWD], failures=failures)
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        result = tuner_for(rec, SearchSettings(trials=10_000, strategy="grid"), db=db).tune_kernel(
            FWD
        )
        assert result.failures == {stage: 1 for stage in stages}
        assert result.winner not in configs
        assert result.ms == pytest.approx(ranked[4]["ms"])
        failed = [t for t in db.trials(kernel=FWD) if t.status == "failed"]
        assert sorted((t.stage, t.reason) for t in failed) == sorted(
            (s, f"{s} in the test") for s in stages
        )
        assert all(t.ms is None for t in failed)


def test_winners_and_trials_are_stored_under_the_full_key(tmp_path):
    rec = recording(PROBLEM)
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        results = tuner_for(rec, SearchSettings(trials=12, batch=4), db=db).tune(KERNELS)
        assert [r.kernel for r in results] == list(KERNELS)  # forward and backward in one run
        winners = {w.key.kernel: w for w in db.winners()}
        assert set(winners) == set(KERNELS)
        for r in results:
            w = winners[r.kernel]
            assert (
                w.key.template_hash,
                w.key.bucket,
                w.key.tokens,
                w.key.gpu_name,
                w.key.compute_capability,
            ) == (template_hash(r.kernel), 16384, 16384, "NVIDIA H200", "9.0")
            assert (w.config, w.ms, w.default_ms) == (r.winner, r.ms, r.default_ms)
            assert w.speedup == pytest.approx(r.default_ms / r.ms) and w.speedup >= 1.0
            assert w.tflops == pytest.approx(PROBLEM.flops(r.kernel) / (r.ms * 1e-3) / 1e12)
            assert w.timer == "replayed: synthetic test timings" and w.trials == 12
            assert len(db.trials(kernel=r.kernel)) == 12


class Interrupting(ReplayTimer):
    """Raises `exc` at the n-th time() call: KeyboardInterrupt, like Ctrl-C mid-run, by
    default."""

    def __init__(self, rec, after: int, exc: BaseException | None = None):
        super().__init__(rec)
        self.after = after
        self.exc = exc or KeyboardInterrupt()

    def time(self, candidate):
        if sum(self.calls.values()) == self.after:
            raise self.exc
        return super().time(candidate)


def test_interrupt_and_resume_lose_no_finished_trial(tmp_path):
    rec = recording(PROBLEM, kernels=[DQ])
    storage = f"sqlite:///{tmp_path / 'study.sqlite'}"
    settings = SearchSettings(trials=20, batch=6, seed=1)
    first = Interrupting(rec, after=9)
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        with pytest.raises(KeyboardInterrupt):
            tuner_for(rec, settings, db=db, storage=storage, timer=first).tune_kernel(DQ)
        assert len(db.trials(kernel=DQ)) == 9
        second = ReplayTimer(rec)
        tuner = tuner_for(rec, settings, db=db, storage=storage, timer=second)
        study = tuner.open_study(DQ)
        assert study.resumed == 9
        result = tuner.tune_kernel(DQ, study)
        assert result.evaluated == 20
        trials = db.trials(kernel=DQ)
        assert len(trials) == 20 and len({t.config for t in trials}) == 20
    searched_first = {c.config for c in first.calls}
    finalists = {c for c, _ in result.side_by_side}
    searched_second = {c.config for c in second.calls} - finalists
    assert not searched_first & searched_second
    assert len(searched_first) == 9


class Hanging(ReplayTimer):
    """Its `at`-th check() blocks until `release` is set, like a launch that never ends."""

    def __init__(self, rec, at: int):
        super().__init__(rec)
        self.at, self.checks, self.hung = at, 0, None
        self.release = threading.Event()

    def check(self, candidate):
        self.checks += 1
        if self.checks == self.at:
            self.hung = candidate
            assert self.release.wait(30), "the hang guard never fired"
        return super().check(candidate)


def test_a_hung_candidate_is_recorded_and_never_asked_again(tmp_path):
    """A candidate whose check does not return within hang_s is told to the study and
    stored as failed with stage 'hang' by the guard's thread, which then ends the
    process (here: a stand-in for os._exit that lets the check return, so the guarded
    block raises Hung). A resumed search skips that config."""
    rec = recording(PROBLEM, kernels=[DQ])
    storage = f"sqlite:///{tmp_path / 'study.sqlite'}"
    settings = SearchSettings(trials=12, batch=4, seed=1, hang_s=0.2)
    timer = Hanging(rec, at=3)
    exits = []

    def stand_in_exit(code):
        exits.append(code)
        timer.release.set()

    with TuningDB.open(tmp_path / "t.sqlite") as db:
        tuner = tuner_for(rec, settings, db=db, storage=storage, timer=timer)
        tuner._exit = stand_in_exit
        with pytest.raises(Hung):
            tuner.tune_kernel(DQ)
        assert exits == [HANG_EXIT]
        hung = [t for t in db.trials(kernel=DQ) if t.stage == "hang"]
        assert [t.config for t in hung] == [timer.hung.config]
        assert "no result within 0.2 s" in hung[0].reason
        second = ReplayTimer(rec)
        resumed = tuner_for(rec, settings, db=db, storage=storage, timer=second)
        result = resumed.tune_kernel(DQ)
        assert timer.hung.config not in {c.config for c in second.calls}
        assert result.evaluated == 12


def test_the_hang_guard_stays_quiet_for_a_block_that_returns():
    fired = []
    with HangGuard(5.0, "x", fired.append, exit=fired.append) as guard:
        pass
    with HangGuard(None, "y", fired.append, exit=fired.append):
        pass
    assert fired == [] and not guard.fired


def test_a_default_outside_the_space_is_still_the_baseline():
    sm80 = DeviceFacts("sm80", "NVIDIA A100-SXM4-80GB", "8.0", 108)
    problem = TuningProblem(dataclasses.replace(SPEC_370M, target="sm80"), 16384)
    rec = recording(problem, device=sm80, kernels=[FWD])
    tuner = tuner_for(rec, SearchSettings(trials=8, batch=4), problem=problem, device=sm80)
    assert tuner.default(FWD) not in tuner.grid(FWD)  # over the sm80 shared-memory limit
    result = tuner.tune_kernel(FWD)
    assert result.default_ms == pytest.approx(synthetic_ms(FWD, tuner.default(FWD)))
    assert result.speedup == pytest.approx(result.default_ms / result.ms)


def test_recording_replays_what_was_measured(tmp_path):
    rec = recording(PROBLEM, kernels=[FWD])
    recorder = RecordingTimer(ReplayTimer(rec), H200)
    result = tuner_for(rec, SearchSettings(trials=6, batch=3), timer=recorder).tune_kernel(FWD)
    recorder.save(tmp_path / "r.json")
    again = ReplayTimer(tmp_path / "r.json")
    assert again.device == H200
    assert again.time(Candidate(FWD, result.winner)) == pytest.approx(result.ms)
    assert len(json.loads((tmp_path / "r.json").read_text())["records"]) == 6


def test_replay_of_an_unrecorded_config_fails_cleanly():
    timer = ReplayTimer(recording(PROBLEM, kernels=[FWD]))
    with pytest.raises(CandidateFailed, match="no recorded timing"):
        timer.time(Candidate(DKV, Dkv()))


TINY = TuningProblem(KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter"), 8)


def test_interpreter_checks_candidates_against_float64():
    timer = InterpreterTimer(Workload(TINY, "cpu"), repeats=1)
    good = Candidate(DKV, Dkv(block_m=16, block_n=32))
    assert timer.prepare([good]) == [None]
    error, failure = timer.check(good)
    assert failure is None and error < 1e-5
    timer.workload.reference(DKV)
    timer.workload._refs["du"] = timer.workload._refs["du"] * 1.01
    error, failure = timer.check(good)
    assert failure.stage == "wrong answer" and "du relative error" in failure.reason
    bad = Candidate(FWD, Fwd(group_heads=2))  # H / Hkv = 2: fine; 3 would not be
    assert timer.check(bad)[1] is None
    error, failure = timer.check(Candidate(FWD, Fwd(group_heads=3)))
    assert failure.stage == "error" and "group_heads" in failure.reason
    assert timer.time(good) > 0


def test_compile_pool_compiles_in_worker_processes():
    pool = CompilePool("cpu", jobs=2, timeout_s=120)
    other = TuningProblem(KernelSpec(2, 2, 16, 1, 16, "float32", "interpreter"), 4)
    try:
        results = pool.compile(
            TINY.spec,
            TINY.tokens,
            [
                (FWD, Fwd(block_m=16, block_n=16)),
                (DQ, Dq(block_m=32, block_n=32, group_heads=2)),
                (FWD, Fwd(group_heads=3)),
            ],
        )
        again = pool.compile(other.spec, other.tokens, [(DKV, Dkv(block_m=16, block_n=16))])
    finally:
        pool.close()
    assert results[:2] == [None, None]
    assert results[2].stage == "error" and "group_heads" in results[2].reason
    assert again == [None]  # the same pool serves another problem


def test_study_storage_is_a_file_per_problem_under_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path))
    url = study_storage_url(PROBLEM, H200)
    assert url.startswith(f"sqlite:///{tmp_path}/studies/NVIDIA-H200-")
    assert url.endswith("-T16384.sqlite")


class CountingPrepare(ReplayTimer):
    def __init__(self, rec):
        super().__init__(rec)
        self.batches = []

    def prepare(self, candidates):
        self.batches.append([c.kernel for c in candidates])
        return super().prepare(candidates)


def test_the_first_batches_of_all_kernels_compile_together():
    timer = CountingPrepare(recording(PROBLEM))
    results = tuner_for(None, SearchSettings(trials=12, batch=4), timer=timer).tune(KERNELS)
    assert sorted(timer.batches[0]) == sorted([FWD] * 4 + [DQ] * 4 + [DKV] * 4)
    assert all(len(set(b)) == 1 for b in timer.batches[1:])  # later: one kernel per batch
    assert [r.evaluated for r in results] == [12, 12, 12]


def test_compile_pool_redoes_the_tasks_of_a_broken_worker(monkeypatch):
    from mhfgen.tuning import compile as compile_mod

    pool = CompilePool("cpu", jobs=1)
    answers = iter([[None, compile_mod.RETRY], [None]])
    monkeypatch.setattr(pool, "_round", lambda spec, tokens, cands: next(answers))
    closed = []
    monkeypatch.setattr(pool, "close", lambda: closed.append(True))
    got = pool.compile(TINY.spec, TINY.tokens, [(FWD, Fwd()), (DQ, Dq())])
    assert got == [None, None] and closed == [True]


def _abort_on_block_n_32(spec_dict, tokens, device, kernel, config_json):
    """A stand-in compile task: block_n=32 kills its process, as a compiler assertion does."""
    import json
    import os

    if json.loads(config_json)["block_n"] == 32:
        os.abort()
    return None


def test_compile_pool_isolates_a_candidate_that_kills_its_worker(monkeypatch):
    from mhfgen.tuning import compile as compile_mod

    monkeypatch.setattr(compile_mod, "_compile_one", _abort_on_block_n_32)
    pool = CompilePool("cpu", jobs=2, timeout_s=60)
    try:
        got = pool.compile(
            TINY.spec,
            TINY.tokens,
            [
                (FWD, Fwd(block_m=16, block_n=16)),
                (FWD, Fwd(block_m=16, block_n=32)),
                (DQ, Dq(block_m=32, block_n=16)),
            ],
        )
    finally:
        pool.close()
    assert got[0] is None and got[2] is None
    assert got[1].stage == "crash"


def test_a_candidate_that_loses_the_device_is_stored_failed_and_stops_the_run(tmp_path):
    from mhfgen.tuning.outcome import Failure
    from mhfgen.tuning.timer import DeviceLost

    rec = recording(PROBLEM, kernels=[DQ])
    storage = f"sqlite:///{tmp_path / 'study.sqlite'}"
    settings = SearchSettings(trials=20, batch=6, seed=1)
    # the 5th timing faults and loses the GPU context (an illegal address)
    faulting = Interrupting(rec, after=4, exc=DeviceLost(Failure("error", "illegal memory access")))
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        with pytest.raises(DeviceLost):
            tuner_for(rec, settings, db=db, storage=storage, timer=faulting).tune_kernel(DQ)
        trials = db.trials(kernel=DQ)
        assert len(trials) == 5  # four timed, the faulting one failed; no more after it
        assert sum(t.ms is None for t in trials) == 1
        tuner = tuner_for(rec, settings, db=db, storage=storage, timer=ReplayTimer(rec))
        study = tuner.open_study(DQ)
        assert study.resumed == 5
        assert tuner.tune_kernel(DQ, study).evaluated == 20


def test_a_baseline_databases_winner_is_retimed_and_kept_when_it_is_faster(tmp_path):
    """The shipped database's winner of the problem (a `baselines` database) is timed
    beside the finalists: a short search into a user database never stores a config
    that the winner it would shadow beats."""
    rec = recording(PROBLEM, kernels=[DQ])
    with TuningDB.open(tmp_path / "shipped.sqlite") as shipped:
        best = tuner_for(
            rec, SearchSettings(trials=10_000, strategy="grid"), db=shipped
        ).tune_kernel(DQ)
    assert best.ms == pytest.approx(best_of(rec, DQ))
    short = SearchSettings(trials=4, batch=4, seed=1, startup=4, refine=0)
    with TuningDB.open(tmp_path / "alone.sqlite") as db:
        alone = tuner_for(rec, short, db=db).tune_kernel(DQ)
    assert alone.ms > best.ms  # four trials miss the grid's best
    with TuningDB.open(tmp_path / "user.sqlite") as db:
        tuner = Tuner(
            PROBLEM,
            H200,
            ReplayTimer(rec),
            db,
            short,
            baselines=[tmp_path / "shipped.sqlite", tmp_path / "missing.sqlite"],
        )
        result = tuner.tune_kernel(DQ)
        (stored,) = db.winners(variant=result.variant)
    assert result.winner == best.winner and result.ms == pytest.approx(best.ms)
    assert stored.config == best.winner
