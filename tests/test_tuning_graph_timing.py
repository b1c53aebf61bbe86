"""Decode-size forwards are tuned by CUDA-graph time (mhfgen.tuning.workload,
Workload.graph_timed; mhfgen.tuning.timer, GpuTimer): which candidates are, the rotated
weight copies they run on, and that the timer takes their time from the graph and labels
it so. The graph itself needs a GPU (the last test)."""

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch
from cases import KERNELS, Fwd

from mhfgen import graph_timing
from mhfgen.spec import KernelSpec
from mhfgen.tuning import timer as timer_mod
from mhfgen.tuning.outcome import Candidate
from mhfgen.tuning.problem import TuningProblem
from mhfgen.tuning.workload import GRAPH_TOKENS, Workload

FWD, DQ, DKV = KERNELS
SPEC = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
CONFIG = Fwd(block_m=16, block_n=32)


def _as_if_on_cuda(workload: Workload) -> Workload:
    workload.device = torch.device("cuda")  # graph_timed reads only the device's type
    return workload


def test_only_decode_size_forwards_on_a_gpu_are_graph_timed():
    decode = _as_if_on_cuda(Workload(TuningProblem(SPEC, GRAPH_TOKENS), "cpu", paired=False))
    assert decode.graph_timed(FWD)
    assert not decode.graph_timed(DQ) and not decode.graph_timed(DKV)
    prefill = _as_if_on_cuda(Workload(TuningProblem(SPEC, GRAPH_TOKENS + 1), "cpu"))
    assert not prefill.graph_timed(FWD)
    assert not Workload(TuningProblem(SPEC, 1), "cpu").graph_timed(FWD)  # the interpreter


@pytest.mark.parametrize(
    "nbytes, copies",
    [
        (graph_timing.ROTATE_BYTES, 2),
        (graph_timing.ROTATE_BYTES // 3 + 1, 3),
        (69 * 10**6, 4),
        (1, graph_timing.MAX_COPIES),
    ],
)
def test_rotation_copies_pass_the_l2_within_a_cap(nbytes, copies):
    assert graph_timing.rotation_copies(nbytes) == copies


@pytest.mark.parametrize("copies, rounds", [(4, 8), (3, 11), (32, 1), (128, 1)])
def test_a_timed_graph_repeats_the_round_to_at_least_32_calls(monkeypatch, copies, rounds):
    """call_ms captures the round of calls (one per weight copy) enough times that the
    graph's own launch is spread over CALLS_PER_GRAPH calls or more, in the round's order,
    and divides the replay by the calls it made."""
    seen = {}

    def fake_graph_ms(calls, replays=20):
        seen["calls"], seen["replays"] = list(calls), replays
        return 2.0 * len(calls)

    monkeypatch.setattr(graph_timing, "graph_ms", fake_graph_ms)
    round_ = [object() for _ in range(copies)]
    assert graph_timing.call_ms(round_, replays=7) == 2.0
    assert seen["calls"] == round_ * rounds and seen["replays"] == 7
    assert len(seen["calls"]) >= graph_timing.CALLS_PER_GRAPH


def test_rotating_calls_run_the_same_forward_on_distinct_weight_copies():
    w = Workload(TuningProblem(SPEC, 3), "cpu")
    sets = w.weight_sets()
    nbytes = sum(t.numel() * t.element_size() for t in (w.k, w.u, w.v))
    assert len(sets) == graph_timing.rotation_copies(nbytes)
    assert sets[0] == (w.k, w.u, w.v)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(sets[0], sets[1]))
    assert all(torch.equal(a, b) for a, b in zip(sets[0], sets[-1]))
    calls = w.rotating_fns(FWD, CONFIG)
    assert len(calls) == len(sets)
    (expected,) = w.run(FWD, CONFIG)
    torch.testing.assert_close(calls[-1](), expected, rtol=0, atol=0)


def test_the_gpu_timer_takes_a_decode_forward_from_the_graph(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    benched = []
    monkeypatch.setattr("triton.testing.do_bench", lambda fn, **k: benched.append(fn) or 5.0)
    workload = Workload(TuningProblem(SPEC, 1), "cpu", paired=False)
    timer = timer_mod.GpuTimer(workload)
    monkeypatch.setattr(timer, "_graph_ms", lambda candidate: 0.25)
    candidate = Candidate(FWD, CONFIG)
    assert timer.time(candidate) == 5.0 and len(benched) == 1  # on the CPU: do_bench
    assert "do_bench" in timer.label_for(FWD)
    _as_if_on_cuda(workload)
    assert timer.time(candidate) == 0.25 and len(benched) == 1
    label = timer.label_for(FWD)
    assert "CUDA graph" in label and f"{len(workload.weight_sets())} calls" in label
    assert timer.label_for(DQ) == timer.label


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_decode_forward_is_timed_in_a_graph_on_a_gpu():
    spec = KernelSpec(4, 2, 64, 4, 128, "bfloat16", "sm90")
    workload = Workload(TuningProblem(spec, 4), "cuda")
    timer = timer_mod.GpuTimer(workload)
    from mhfgen import registry

    config = registry.default_config(
        FWD, spec, 4, torch.cuda.get_device_properties(0).multi_processor_count
    )
    ms = timer.time(Candidate(FWD, config))
    assert 0 < ms < 1.0
    assert "CUDA graph" in timer.label_for(FWD)


def test_the_tune_summary_says_a_decode_forward_was_timed_in_graphs(monkeypatch):
    from types import SimpleNamespace

    from mhfgen.cli.tune import _summary
    from mhfgen.tuning.problem import DeviceFacts

    problem = TuningProblem(SPEC, 1)
    workload = Workload(problem, "cpu", paired=False)
    timer = timer_mod.GpuTimer(workload)
    _as_if_on_cuda(workload)
    result = SimpleNamespace(
        kernel="fwd",
        variant=FWD,
        winner=CONFIG,
        ms=0.02,
        tflops=1.0,
        default_ms=0.03,
        speedup=1.5,
        evaluated=4,
        failed=0,
        side_by_side=[],
    )
    device = DeviceFacts.of(torch.device("cpu"))
    text = _summary(problem, device, timer, [result], None, None)
    assert f"fwd timed per call in CUDA graphs: {timer.label_for(FWD)}" in text
    assert "split backward" not in text
