"""Parallel compilation of candidate configs in worker processes.

NOTE: Triton compiles a kernel on its first launch, and its compiler holds the GIL for
much of the work, so threads do not compile in parallel. Each worker of a 'spawn' process
pool builds uninitialised inputs of the problem's shapes once, then launches every
candidate it is given once: that compiles it and stores the binary in Triton's on-disk
cache (and the generated module in mhfgen's), so the parent's first launch of the same
candidate loads it instead of compiling. Uninitialised inputs are fine: nothing is
checked here, and the memory each program touches depends on shapes only. A worker that
exceeds the timeout is killed with the whole pool, which is rebuilt for the next batch.

NOTE: a launch that faults (an illegal address) leaves a CUDA context unusable. The worker
reports that candidate as failed and answers RETRY to every later task; the parent then
rebuilds the pool and compiles those again. So a faulting config costs one failed trial,
never other candidates, and it never reaches the parent process, whose context the
timing needs.

Failures come back classified: 'resources' (Triton's OutOfResources: shared memory or
registers), 'compile' (a compilation error), 'error' (anything else), 'timeout', 'crash'
(the compiling process died; see CompilePool).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

from .outcome import Failure, classify

log = logging.getLogger(__name__)

_worker_state: dict = {}
#: a worker's answer for a task it cannot do (its CUDA context is broken): redo elsewhere
RETRY = "retry"
#: a task whose pool broke (a worker process died) before it finished: redo it alone
CRASHED = "crashed"
MAX_ROUNDS = 3


def _worker_inputs(spec_dict: dict, tokens: int, device: str) -> dict:
    """Uninitialised inputs of one problem, kept for the worker's next candidates (only
    the latest problem's, to bound memory)."""
    key = (tuple(sorted(spec_dict.items())), tokens, device)
    if _worker_state.get("key") != key:
        import torch

        from ..spec import KernelSpec

        _worker_state.clear()
        spec, dev = KernelSpec(**spec_dict), torch.device(device)
        dtype, wdtype = spec.torch_dtype, spec.weight_torch_dtype
        weights = (spec.kv_heads, spec.experts, spec.expert_dim, spec.head_dim)
        _worker_state.update(
            key=key,
            device=dev,
            q=torch.empty(1, tokens, spec.heads, spec.head_dim, dtype=dtype, device=dev),
            k=torch.empty(weights, dtype=wdtype, device=dev),
            u=torch.empty(weights, dtype=wdtype, device=dev),
            v=torch.empty(weights, dtype=wdtype, device=dev),
            scales=torch.ones(3, *weights[:3], device=dev) if spec.fp8_weights else None,
            r=torch.empty(1, tokens, spec.heads, spec.experts, dtype=torch.float32, device=dev),
            do=torch.empty(1, tokens, spec.heads, spec.head_dim, dtype=dtype, device=dev),
        )
    return _worker_state


def _init_worker() -> None:
    import mhfgen  # noqa: F401 - sets TRITON_INTERPRET on CPU-only machines first


def _compile_one(
    spec_dict: dict, tokens: int, device: str, kernel: str, config_json: str
) -> Failure | None:
    import json

    import torch

    from .. import registry

    if _worker_state.get("broken"):
        return RETRY
    try:
        s = _worker_inputs(spec_dict, tokens, device)
        variant = registry.get(kernel)
        args = (s["q"], s["k"], s["u"], s["v"], s["r"])
        if variant.takes_grad:
            args += (s["do"],)
        elif s["scales"] is not None:  # the forward on FP8 weights
            args += (s["scales"],)
        variant.launch(*args, config=variant.config_from_dict(json.loads(config_json)))
        if s["device"].type == "cuda":
            torch.cuda.synchronize(s["device"])
    except Exception as exc:  # noqa: BLE001 - every failure becomes a failed trial
        if device.startswith("cuda") and not context_ok():
            broken = {"broken": True}
            _worker_state.clear()
            _worker_state.update(broken)
        return classify(exc)
    return None


def context_ok() -> bool:
    """Whether this process's CUDA context still works after an error (faults are sticky)."""
    import torch

    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
    except Exception:  # noqa: BLE001
        return False
    return True


class CompilePool:
    """A pool of `jobs` spawned workers compiling candidates on `device`; one pool serves
    any number of problems.

    compile(spec, tokens, [(kernel, config), ...]) -> [Failure or None, ...] in order.

    NOTE: some compiler bugs abort the process (an assertion in an MLIR pass, e.g. Triton's
    warp-specialisation pass, triton-lang/triton#9728) instead of raising. A dead worker
    breaks the whole executor at once (BrokenProcessPool, no waiting for a timeout); the
    candidates that did not finish are then compiled again each in a process of its own,
    so the one that kills its compiler fails alone, as 'crash', and the others compile.
    """

    def __init__(self, device: str, jobs: int, timeout_s: float = 180.0) -> None:
        self.device = str(device)
        self.jobs = max(1, jobs)
        self.timeout_s = timeout_s
        self._pool = None

    def _executor(self, workers: int):
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)

    def _get_pool(self):
        if self._pool is None:
            self._pool = self._executor(self.jobs)
        return self._pool

    def compile(
        self, spec, tokens: int, candidates: Sequence[tuple[str, object]]
    ) -> list[Failure | None]:
        results: list[Failure | None | str] = [RETRY] * len(candidates)
        for _ in range(MAX_ROUNDS):
            todo = [i for i, r in enumerate(results) if r == RETRY]
            if not todo:
                break
            for i, r in zip(todo, self._round(spec, tokens, [candidates[i] for i in todo])):
                results[i] = r
            crashed = [i for i, r in enumerate(results) if r == CRASHED]
            if crashed:
                log.warning(
                    "a compile worker died: compiling %d candidate(s) one per process", len(crashed)
                )
                for i, r in zip(
                    crashed, self._isolated(spec, tokens, [candidates[i] for i in crashed])
                ):
                    results[i] = r
            if any(r == RETRY for r in results):
                log.warning("a compile worker's CUDA context broke: restarting the pool")
                self.close()
        return [
            Failure("error", "compile workers kept failing") if r == RETRY else r for r in results
        ]

    def _submit(self, executor, spec_dict: dict, tokens: int, candidate):
        kernel, config = candidate
        return executor.submit(
            _compile_one, spec_dict, tokens, self.device, kernel, config.to_json()
        )

    def _outcome(self, fut, deadline: float, broken):
        """A task's answer (Failure, None or RETRY); a 'timeout' Failure past `deadline`;
        `broken` when its process died (BrokenProcessPool); an 'error' Failure for anything
        else the task raised."""
        try:
            return fut.result(timeout=max(0.1, deadline - time.monotonic()))
        except FutureTimeout:
            return Failure("timeout", f"not compiled within {self.timeout_s:.0f} s")
        except BrokenProcessPool:
            return broken
        except Exception as exc:  # noqa: BLE001 - anything the task raised
            return Failure("error", f"compile worker failed: {exc}")

    def _round(self, spec, tokens: int, candidates) -> list:
        """One batch through the pool: Failure/None per candidate, RETRY (the worker's
        context broke) or CRASHED (the pool broke before the candidate finished)."""
        pool = self._get_pool()
        spec_dict = spec.as_dict()
        pending = [self._submit(pool, spec_dict, tokens, c) for c in candidates]
        deadline = time.monotonic() + self.timeout_s * max(1, -(-len(candidates) // self.jobs))
        results = [self._outcome(fut, deadline, CRASHED) for fut in pending]
        timed_out = any(isinstance(r, Failure) and r.stage == "timeout" for r in results)
        if timed_out:
            log.warning("compile timeout: restarting the compile pool")
        if timed_out or CRASHED in results:
            self.close()
        return results

    def _isolated(self, spec, tokens: int, candidates) -> list:
        """Compile each candidate in a fresh process of its own, `jobs` at a time."""
        crash = Failure(
            "crash", "the compiler process died (an abort or a signal while compiling this config)"
        )
        results: list = []
        spec_dict = spec.as_dict()
        for lo in range(0, len(candidates), self.jobs):
            group = candidates[lo : lo + self.jobs]
            executors = [self._executor(1) for _ in group]
            futures = [self._submit(ex, spec_dict, tokens, c) for ex, c in zip(executors, group)]
            deadline = time.monotonic() + self.timeout_s
            for ex, fut in zip(executors, futures):
                results.append(self._outcome(fut, deadline, crash))
                _shutdown(ex)
        return results

    def close(self) -> None:
        if self._pool is not None:
            _shutdown(self._pool)
            self._pool = None


def _shutdown(executor) -> None:
    """Stop an executor now, killing its workers (a hung compile must not outlive it)."""
    processes = list(getattr(executor, "_processes", {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.kill()
    for proc in processes:
        proc.join(timeout=5)
