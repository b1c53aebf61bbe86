"""The Timer interface the search measures candidates through, and its implementations.

A Timer turns candidates into outcomes in three steps:
    prepare(candidates) -> [Failure | None]   compile (in parallel where it can)
    check(candidate)    -> (error, Failure | None)  the answer against float64
    time(candidate)     -> milliseconds         one median; raises CandidateFailed
and says what its numbers are: `label` (printed beside every result), label_for(kernel)
(stored with every trial of variant `kernel`: the label, and for a kernel timed in
context what it was timed beside) and `gpu_timings` (False: the numbers must not be read
as GPU speed).

In context (mhfgen.tuning.workload, Workload.pairing): a dK/dU/dV candidate's time is
the median of the candidate launched beside the dispatcher's dQ/dR on a second stream,
less the median of that dQ/dR alone (measured once per timer, the same way): what the
candidate adds to the split backward.

    GpuTimer          a CUDA device: compile pool, triton.testing.do_bench medians
                      (warm-up, then repeats each preceded by an L2 flush); a forward
                      at decode size (Workload.graph_timed): the median replay of one
                      CUDA graph of calls on rotated weight copies, per call
    InterpreterTimer  Triton's interpreter on the CPU: wall-clock medians, labelled as
                      NOT GPU timings
    ReplayTimer       timings and failures recorded in a JSON file (mhfgen-timings
                      format below), so search, database, export/import and dispatch are
                      tested without a GPU, and search strategies compared offline
    RecordingTimer    wraps another timer and records what it measured in that format

Recorded-timings JSON:
    {"format": "mhfgen-timings", "label": "...", "device": {DeviceFacts fields},
     "records": [{"kernel": K, "config": {K's config}, "ms": 0.123, "error": 1e-6},
                 {"kernel": K, "config": {...}, "failure": {"stage": S, "reason": R}}]}
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from .. import registry, schema2
from .outcome import Candidate, Failure, classify
from .problem import DeviceFacts

log = logging.getLogger(__name__)

TIMINGS_FORMAT = "mhfgen-timings"


class CandidateFailed(Exception):
    """Raised by Timer.time when a candidate cannot be timed."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(str(failure))
        self.failure = failure


class DeviceLost(CandidateFailed):
    """The candidate faulted (an illegal address) and took this process's CUDA context with
    it: the candidate is a failed trial, and nothing more can run in this process. The
    tuner stores the trial and stops; the same command run again resumes the study."""


class Timer(Protocol):
    """How the search compiles, checks and times candidates (see the module doc)."""

    label: str
    gpu_timings: bool

    def prepare(self, candidates: Sequence[Candidate]) -> list[Failure | None]: ...

    def check(self, candidate: Candidate) -> tuple[float | None, Failure | None]: ...

    def time(self, candidate: Candidate) -> float: ...

    def label_for(self, kernel: str) -> str: ...

    def close(self) -> None: ...


class _WorkloadTimer:
    """What the GPU and interpreter timers share: a Workload, answer checks, and the
    subtraction of a paired kernel's own time (module doc)."""

    def __init__(self, workload) -> None:
        self.workload = workload
        self._beside: dict[str, float] = {}  # paired op -> its median alone, ms

    def _beside_ms(self, kernel: str, measure) -> float:
        """The median time alone of what `kernel` is timed beside, by `measure` (a
        closure -> ms), measured on first use; 0 for a kernel timed alone."""
        pairing = self.workload.pairing(kernel)
        if pairing is None:
            return 0.0
        if pairing.op not in self._beside:
            self._beside[pairing.op] = measure(pairing.launch)
        return self._beside[pairing.op]

    def label_for(self, kernel: str) -> str:
        pairing = self.workload.pairing(kernel)
        if pairing is None:
            return self.label
        alone = self._beside.get(pairing.op)
        less = f", less its {alone:.4g} ms alone" if alone is not None else ", less its time alone"
        return (
            f"{self.label}; in the split backward: beside {pairing.variant} "
            f"{pairing.config.describe()} on a second stream{less}"
        )

    def check(self, candidate: Candidate) -> tuple[float | None, Failure | None]:
        try:
            error, reason = self.workload.check(candidate.kernel, candidate.config)
        except Exception as exc:  # noqa: BLE001 - a launch error is a failed trial
            return None, classify(exc)
        return error, (Failure("wrong answer", reason) if reason else None)

    def _load_in_process(self, candidates: Sequence[Candidate]) -> list[Failure | None]:
        from ..codegen import load_kernel

        def load(c: Candidate) -> Failure | None:
            try:
                load_kernel(c.kernel, self.workload.problem.spec, c.config)
            except Exception as exc:  # noqa: BLE001
                return classify(exc)
            return None

        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(load, candidates))

    def close(self) -> None:
        pass


class GpuTimer(_WorkloadTimer):
    """Times candidates on a CUDA device with triton.testing.do_bench.

    Each measurement: `warmup_ms` of warm-up launches, then as many launches as fit in
    `rep_ms`, each after the 256 MiB L2 flush do_bench does, reduced to the median. A
    candidate whose single launch takes over `launch_timeout_s` is a 'timeout'.
    `jobs` > 1 compiles through a CompilePool of that many processes (or pass `pool`, a
    CompilePool shared by several problems; the caller closes it then).

    A forward at decode size (mhfgen.tuning.workload, Workload.graph_timed) is timed as a
    server runs it instead: one CUDA graph of calls, each on its own copy of the weights,
    `graph_replays` replays, the median replay time over the calls (the method of
    `mhfgen bench --suite decode`); label_for says so.
    """

    gpu_timings = True

    def __init__(
        self,
        workload,
        jobs: int = 1,
        warmup_ms: float = 10.0,
        rep_ms: float = 40.0,
        compile_timeout_s: float = 180.0,
        launch_timeout_s: float = 5.0,
        pool=None,
        graph_replays: int = 20,
    ) -> None:
        super().__init__(workload)
        import triton

        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        self.graph_replays = graph_replays
        self.launch_timeout_s = launch_timeout_s
        self._triton, self._gpu = triton.__version__, DeviceFacts.of(workload.device).gpu_name
        self.label = (
            f"GPU {self._gpu}: do_bench median "
            f"({warmup_ms:g} ms warm-up, {rep_ms:g} ms of repeats, L2 flushed), "
            f"Triton {self._triton}"
        )
        self._pool, self._own_pool = pool, pool is None and jobs > 1
        if self._own_pool:
            from .compile import CompilePool

            self._pool = CompilePool(str(workload.device), jobs, compile_timeout_s)

    def prepare(self, candidates: Sequence[Candidate]) -> list[Failure | None]:
        if self._pool is None:
            return self._load_in_process(candidates)
        problem = self.workload.problem
        results = self._pool.compile(
            problem.spec, problem.tokens, [(c.kernel, c.config) for c in candidates]
        )
        loaded = self._load_in_process([c for c, f in zip(candidates, results) if f is None])
        it = iter(loaded)
        return [f if f is not None else next(it) for f in results]

    def label_for(self, kernel: str) -> str:
        if not self.workload.graph_timed(kernel):
            return super().label_for(kernel)
        from ..graph_timing import WARMUP_MS

        copies = self.workload.weight_copies()
        return (
            f"GPU {self._gpu}: CUDA graph of {copies} "
            f"calls, each on its own copy of the weights, median of {self.graph_replays} "
            f"replays per call after {WARMUP_MS:g} ms of untimed replays, "
            f"Triton {self._triton}"
        )

    def _graph_ms(self, candidate: Candidate) -> float:
        """Per-call milliseconds of one CUDA graph of the candidate's rotating calls
        (mhfgen.graph_timing.call_ms)."""
        import torch

        from ..graph_timing import call_ms

        calls = self.workload.rotating_fns(candidate.kernel, candidate.config)
        with torch.no_grad():
            return call_ms(calls, self.graph_replays)

    def time(self, candidate: Candidate) -> float:
        import torch
        from triton.testing import do_bench

        fn = self.workload.launch_fn(candidate.kernel, candidate.config)
        try:
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            once = time.perf_counter() - start
            if once > self.launch_timeout_s:
                raise CandidateFailed(Failure("timeout", f"one launch took {once:.1f} s"))

            if self.workload.graph_timed(candidate.kernel):
                return self._graph_ms(candidate)

            def bench(f) -> float:
                return float(
                    do_bench(f, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median")
                )

            return bench(fn) - self._beside_ms(candidate.kernel, bench)
        except CandidateFailed:
            raise
        except Exception as exc:  # noqa: BLE001
            from .compile import context_ok

            if not context_ok():
                raise DeviceLost(classify(exc)) from exc
            raise CandidateFailed(classify(exc)) from exc

    def close(self) -> None:
        if self._own_pool:
            self._pool.close()


#: the least time the interpreter timer reports for a kernel timed beside another, ms
MIN_INTERPRETER_MS = 1e-3


class InterpreterTimer(_WorkloadTimer):
    """Wall-clock medians of candidates run by Triton's interpreter on the CPU.

    One warm-up run, then `repeats` runs; the median in milliseconds. These numbers rank
    configs for the interpreter only: they are NOT GPU timings.
    """

    gpu_timings = False
    label = "interpreter wall clock (Triton's interpreter on the CPU): NOT GPU timings"

    def __init__(self, workload, repeats: int = 3) -> None:
        super().__init__(workload)
        self.repeats = max(1, repeats)

    def prepare(self, candidates: Sequence[Candidate]) -> list[Failure | None]:
        return self._load_in_process(candidates)

    def time(self, candidate: Candidate) -> float:
        fn = self.workload.launch_fn(candidate.kernel, candidate.config)
        try:
            fn()
            paired = self._median(fn)
            alone = self._beside_ms(candidate.kernel, self._median)
        except Exception as exc:  # noqa: BLE001
            raise CandidateFailed(classify(exc)) from exc
        # NOTE: the interpreter runs a pair one kernel after the other, so the difference
        # is this kernel's time; on a loaded CPU the noise of two medians can exceed it
        # and make it negative. A floor keeps the candidate timed (interpreter timings
        # only rank configs for the interpreter) instead of failing every trial.
        return max(paired - alone, MIN_INTERPRETER_MS)

    def _median(self, fn) -> float:
        samples = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)


def _record_key(kernel: str, config) -> tuple[str, str]:
    return kernel, registry.get(kernel).coerce(config).to_json()


def _parse(kernel: str, data: dict):
    """A recorded config (the variant's fields, or the 13-field config of a schema-2
    recording, mhfgen.schema2) as the variant's config."""
    return schema2.config(registry.get(kernel), data)


class ReplayTimer:
    """Replays timings and failures recorded in an mhfgen-timings JSON file.

    A failure recorded with stage 'compile', 'resources' or 'timeout' is returned by
    prepare(), 'wrong answer' by check(); any other by time(). A candidate that was not
    recorded fails with stage 'error' (the recording does not cover it). `calls` counts
    time() calls per candidate, so tests can see what was measured.
    """

    gpu_timings: bool

    def __init__(self, source: str | Path | dict) -> None:
        data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
        if data.get("format") != TIMINGS_FORMAT:
            raise ValueError(f"{source}: not an {TIMINGS_FORMAT} file")
        self.device = DeviceFacts(**data["device"])
        self.gpu_timings = self.device.is_gpu
        self.label = f"replayed: {data.get('label', 'recorded timings')}"
        self._records: dict[tuple[str, str], dict] = {}
        for rec in data["records"]:
            config = _parse(rec["kernel"], rec["config"])
            self._records[_record_key(rec["kernel"], config)] = rec
        self.calls: dict[Candidate, int] = {}

    def _failure(self, candidate: Candidate, stages: tuple[str, ...]) -> Failure | None:
        rec = self._records.get(_record_key(candidate.kernel, candidate.config))
        if rec is None:
            return (
                Failure("error", "no recorded timing for this config")
                if "error" in stages
                else None
            )
        failure = rec.get("failure")
        if failure and failure["stage"] in stages:
            return Failure(failure["stage"], failure["reason"])
        return None

    def prepare(self, candidates: Sequence[Candidate]) -> list[Failure | None]:
        return [self._failure(c, ("compile", "resources", "timeout")) for c in candidates]

    def check(self, candidate: Candidate) -> tuple[float | None, Failure | None]:
        rec = self._records.get(_record_key(candidate.kernel, candidate.config), {})
        return rec.get("error"), self._failure(candidate, ("wrong answer",))

    def time(self, candidate: Candidate) -> float:
        self.calls[candidate] = self.calls.get(candidate, 0) + 1
        rec = self._records.get(_record_key(candidate.kernel, candidate.config))
        if rec is None:
            raise CandidateFailed(Failure("error", "no recorded timing for this config"))
        if rec.get("failure"):
            raise CandidateFailed(Failure(rec["failure"]["stage"], rec["failure"]["reason"]))
        return float(rec["ms"])

    def label_for(self, kernel: str) -> str:
        return self.label

    def close(self) -> None:
        pass


class RecordingTimer:
    """Passes everything to `inner` and records the outcomes in mhfgen-timings form;
    a candidate timed several times keeps the median of its times."""

    def __init__(self, inner: Timer, device: DeviceFacts) -> None:
        self.inner, self.device = inner, device
        self.label, self.gpu_timings = inner.label, inner.gpu_timings
        self._times: dict[Candidate, list[float]] = {}
        self._errors: dict[Candidate, float | None] = {}
        self._failures: dict[Candidate, Failure] = {}

    def prepare(self, candidates: Sequence[Candidate]) -> list[Failure | None]:
        results = self.inner.prepare(candidates)
        for c, f in zip(candidates, results):
            if f is not None:
                self._failures[c] = f
        return results

    def check(self, candidate: Candidate) -> tuple[float | None, Failure | None]:
        error, failure = self.inner.check(candidate)
        self._errors[candidate] = error
        if failure is not None:
            self._failures[candidate] = failure
        return error, failure

    def time(self, candidate: Candidate) -> float:
        try:
            ms = self.inner.time(candidate)
        except CandidateFailed as exc:
            self._failures[candidate] = exc.failure
            raise
        self._times.setdefault(candidate, []).append(ms)
        return ms

    def label_for(self, kernel: str) -> str:
        return self.inner.label_for(kernel)

    def close(self) -> None:
        self.inner.close()

    def absorb(self, recording: dict) -> None:
        """Add what another RecordingTimer recorded (a worker's, in mhfgen-timings form)."""
        for rec in recording["records"]:
            c = Candidate(rec["kernel"], _parse(rec["kernel"], rec["config"]))
            if "ms" in rec:
                self._times.setdefault(c, []).append(float(rec["ms"]))
                self._errors[c] = rec.get("error")
            else:
                self._failures[c] = Failure(rec["failure"]["stage"], rec["failure"]["reason"])

    def recording(self) -> dict:
        records = []
        for c in sorted(
            set(self._times) | set(self._failures), key=lambda c: (c.kernel, c.config.to_json())
        ):
            rec = {"kernel": c.kernel, "config": c.config.as_dict()}
            if c in self._times:
                rec["ms"] = statistics.median(self._times[c])
                rec["error"] = self._errors.get(c)
            else:
                f = self._failures[c]
                rec["failure"] = {"stage": f.stage, "reason": f.reason}
            records.append(rec)
        return {
            "format": TIMINGS_FORMAT,
            "label": self.label,
            "device": self.device.__dict__.copy(),
            "records": records,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.recording(), indent=1) + "\n")
