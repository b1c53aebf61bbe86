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
registers), 'compile' (a compilation error), 'error' (anything else), 'timeout'.
"""
from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Sequence

from .outcome import Failure, classify

log = logging.getLogger(__name__)

_worker_state: dict = {}
#: a worker's answer for a task it cannot do (its CUDA context is broken): redo elsewhere
RETRY = "retry"
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
        dtype = spec.torch_dtype
        weights = (spec.kv_heads, spec.experts, spec.expert_dim, spec.head_dim)
        _worker_state.update(
            key=key, device=dev,
            q=torch.empty(1, tokens, spec.heads, spec.head_dim, dtype=dtype, device=dev),
            k=torch.empty(weights, dtype=dtype, device=dev),
            u=torch.empty(weights, dtype=dtype, device=dev),
            v=torch.empty(weights, dtype=dtype, device=dev),
            r=torch.empty(1, tokens, spec.heads, spec.experts, dtype=torch.float32, device=dev),
            do=torch.empty(1, tokens, spec.heads, spec.head_dim, dtype=dtype, device=dev))
    return _worker_state


def _init_worker() -> None:
    import mhfgen  # noqa: F401 - sets TRITON_INTERPRET on CPU-only machines first


def _compile_one(spec_dict: dict, tokens: int, device: str, kernel: str,
                 config_json: str) -> Failure | None:
    import json

    import torch

    from .. import kernels
    from ..spec import LaunchConfig

    if _worker_state.get("broken"):
        return RETRY
    try:
        s = _worker_inputs(spec_dict, tokens, device)
        args = (s["q"], s["k"], s["u"], s["v"], s["r"])
        if kernel != "flash_mhf_fwd":
            args += (s["do"],)
        getattr(kernels, kernel)(*args, config=LaunchConfig.from_dict(json.loads(config_json)))
        if s["device"].type == "cuda":
            torch.cuda.synchronize(s["device"])
    except Exception as exc:  # noqa: BLE001 - every failure becomes a failed trial
        if device.startswith("cuda") and not _context_ok():
            broken = {"broken": True}
            _worker_state.clear()
            _worker_state.update(broken)
        return classify(exc)
    return None


def _context_ok() -> bool:
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
    """

    def __init__(self, device: str, jobs: int, timeout_s: float = 180.0) -> None:
        self.device = str(device)
        self.jobs = max(1, jobs)
        self.timeout_s = timeout_s
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.jobs, initializer=_init_worker)
        return self._pool

    def compile(self, spec, tokens: int,
                candidates: Sequence[tuple[str, object]]) -> list[Failure | None]:
        results: list[Failure | None | str] = [RETRY] * len(candidates)
        for _ in range(MAX_ROUNDS):
            todo = [i for i, r in enumerate(results) if r == RETRY]
            if not todo:
                break
            for i, r in zip(todo, self._round(spec, tokens, [candidates[i] for i in todo])):
                results[i] = r
            if any(r == RETRY for r in results):
                log.warning("a compile worker's CUDA context broke: restarting the pool")
                self.close()
        return [Failure("error", "compile workers kept failing") if r == RETRY else r
                for r in results]

    def _round(self, spec, tokens: int, candidates) -> list:
        pool = self._get_pool()
        spec_dict = spec.as_dict()
        pending = [pool.apply_async(_compile_one, (spec_dict, tokens, self.device, kernel,
                                                   config.to_json()))
                   for kernel, config in candidates]
        deadline = time.monotonic() + self.timeout_s * max(1, -(-len(candidates) // self.jobs))
        results: list = []
        timed_out = False
        for res in pending:
            try:
                results.append(res.get(timeout=max(0.1, deadline - time.monotonic())))
            except multiprocessing.TimeoutError:
                timed_out = True
                results.append(Failure("timeout", f"not compiled within {self.timeout_s:.0f} s"))
            except Exception as exc:  # noqa: BLE001 - a worker that died
                results.append(Failure("error", f"compile worker failed: {exc}"))
        if timed_out:
            log.warning("compile timeout: restarting the compile pool")
            self.close()
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
