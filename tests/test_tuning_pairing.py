"""Timing dK/dU/dV in context: beside the dispatcher's dQ/dR, as the split backward runs
them, less that dQ/dR's time alone (mhfgen.tuning.workload, mhfgen.tuning.timer). The
two-stream launch itself needs a GPU; here the pairing's choice, the launch of both
kernels, the subtraction and the labels the database stores are proved on the CPU."""

import dataclasses

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import torch
from cases import KERNELS, Dkv

from mhfgen import dispatch
from mhfgen.spec import KernelSpec
from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.outcome import Candidate
from mhfgen.tuning.problem import DeviceFacts, TuningProblem
from mhfgen.tuning.search import SearchSettings, Tuner
from mhfgen.tuning.timer import InterpreterTimer
from mhfgen.tuning.workload import Workload

FWD, DQ, DKV = KERNELS
TINY = TuningProblem(KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter"), 8)
CPU = torch.device("cpu")


def test_the_cpu_times_every_kernel_alone_by_default():
    w = Workload(TINY, "cpu")
    assert not w.paired
    assert all(w.pairing(k) is None for k in (FWD, DQ, DKV))


def test_dkv_is_paired_with_the_dispatched_dq_and_dq_with_nothing():
    w = Workload(TINY, "cpu", paired=True)
    pairing = w.pairing(DKV)
    choice = dispatch.decide("bwd_dq", TINY.spec, TINY.tokens, CPU)
    assert (pairing.op, pairing.variant, pairing.config) == (
        "bwd_dq",
        choice.variant,
        choice.config,
    )
    assert w.pairing(DKV) is pairing  # chosen once per workload
    assert w.pairing(DQ) is None and w.pairing(FWD) is None  # dQ/dR alone: no double count


def test_a_paired_launch_runs_the_candidate_and_its_partner():
    w = Workload(TINY, "cpu", paired=True)
    calls = []
    pairing = w.pairing(DKV)
    w._pairings["bwd_dkv"] = dataclasses.replace(pairing, launch=lambda: calls.append("dq"))
    fn = w.launch_fn(DKV, Dkv(block_m=16, block_n=32))
    fn()
    fn()
    assert calls == ["dq", "dq"]
    alone = Workload(TINY, "cpu").launch_fn(DKV, Dkv(block_m=16, block_n=32))
    alone()
    assert calls == ["dq", "dq"]


class FakeMedian:
    """Medians by what is timed: 10 ms for the paired launch, 4 ms for dQ/dR alone."""

    def __init__(self, partner) -> None:
        self.partner, self.calls = partner, []

    def __call__(self, fn) -> float:
        self.calls.append(fn)
        return 4.0 if fn is self.partner else 10.0


def test_a_paired_time_is_the_pair_less_the_partner_alone_measured_once():
    timer = InterpreterTimer(Workload(TINY, "cpu", paired=True), repeats=1)
    pairing = timer.workload.pairing(DKV)
    fake = FakeMedian(pairing.launch)
    timer._median = fake
    candidate = Candidate(DKV, Dkv(block_m=16, block_n=32))
    assert timer.time(candidate) == 6.0
    assert timer.time(candidate) == 6.0
    assert sum(fn is pairing.launch for fn in fake.calls) == 1  # measured once
    assert timer.label_for(DKV).startswith(
        timer.label + "; in the split backward: beside " + pairing.variant
    )
    assert "less its 4 ms alone" in timer.label_for(DKV)
    assert timer.label_for(DQ) == timer.label


def test_the_tuner_stores_what_a_paired_time_was_measured_beside(tmp_path):
    timer = InterpreterTimer(Workload(TINY, "cpu", paired=True), repeats=1)
    facts = DeviceFacts.of(CPU)
    with TuningDB.open(tmp_path / "t.sqlite") as db:
        result = Tuner(
            TINY, facts, timer, db, SearchSettings(trials=2, batch=2, rounds=1, top_k=1)
        ).tune_kernel(DKV)
        assert result.winner is not None
        (winner,) = db.winners(variant=DKV)
        trials = db.trials(variant=DKV)
    assert "in the split backward: beside flash_mhf_bwd_dq" in winner.timer
    assert trials and all("in the split backward" in t.timer for t in trials)


def test_the_pairing_reads_a_dq_winner_stored_after_the_dispatcher_read_the_databases(
    fresh_dispatch,
):
    """`mhfgen tune` stores dQ/dR's winner before it tunes dK/dU/dV: that winner, not what
    the dispatcher cached earlier in the process, is what dK/dU/dV is timed beside."""
    import triton

    from mhfgen import paths
    from mhfgen.codegen import template_hash
    from mhfgen.tuning.db import TuningKey, WinnerRecord, utc_now

    before = dispatch.explain_choice("bwd_dq", TINY.spec, TINY.tokens, CPU)  # read, cached
    assert before.source == "heuristic"
    stem = before.variant
    tuned = dataclasses.replace(before.config, block_m=64, block_n=16)
    assert tuned != before.config
    key = TuningKey.of(
        stem,
        template_hash(stem),
        TINY.spec,
        TINY.bucket,
        TINY.tokens,
        "interpreter",
        "none",
        triton.__version__,
    )
    with TuningDB.open(paths.user_db_path()) as db:
        db.put_winner(WinnerRecord(key, tuned, 1.0, 1.0, 2.0, 2.0, "test", 5, "0", "0", utc_now()))
    assert dispatch.explain_choice("bwd_dq", TINY.spec, TINY.tokens, CPU).config == before.config
    pairing = Workload(TINY, "cpu", paired=True).pairing(DKV)
    assert (pairing.variant, pairing.config) == (stem, tuned)


def test_a_paired_interpreter_time_never_goes_below_its_floor(monkeypatch):
    """On a loaded CPU the median of the pair less the median of dQ/dR alone can come out
    negative (noise larger than the kernel's own time): the timer reports its floor
    instead, so the tuner keeps the candidate rather than failing every trial."""
    from mhfgen import registry
    from mhfgen.tuning.timer import MIN_INTERPRETER_MS

    timer = InterpreterTimer(Workload(TINY, "cpu", paired=True), repeats=1)
    monkeypatch.setattr(timer, "_beside_ms", lambda kernel, measure: 1e9)
    config = registry.get(DKV).default_config(TINY.spec, TINY.tokens, 1)
    assert timer.time(Candidate(DKV, config)) == MIN_INTERPRETER_MS
