"""MHFGEN_TUNE_ON_MISS=1: tune a missed dispatch key in-process, on first sight.

Off by default. When on, the first call of a process that dispatch serves without an exact
tuned key (mhfgen.record.on_miss) runs a small search for that one kernel, spec and token
count on the caller's device before launching: MHFGEN_TUNE_ON_MISS_TRIALS configs (default
8, the built-in default among them), checked against the float64 reference and timed like
`mhfgen tune` does, the winner stored in the user database and used from this call on.
Each key is tried at most once per process; what it costs is logged as a warning before
and after (expect seconds on a GPU, the first-call cost the user opted into).

Skipped, with a log line, where tuning cannot run: inside a CUDA graph capture, inside a
search already running in this thread, bfloat16 through Triton's interpreter. A search
that fails is logged and the dispatcher keeps its fallback choice. Other keys that could
now use the new winner (same bucket) see it in the next process or after
mhfgen.dispatch.clear_cache().

The runtime reaches this module only through its hook: importing it registers
tune_missing with mhfgen.record (register_miss_tuner), and pyproject.toml names it under the
entry-point group mhfgen.record.MISS_TUNER_GROUP, which mhfgen.record loads on the first
miss where nothing has been registered. The switch itself (MHFGEN_TUNE_ON_MISS,
mhfgen.record.tune_on_miss_enabled) is read by the runtime.

NOTE: the search runs in the caller's process and CUDA context (configs compiled in-process,
one at a time). Candidates are pruned by the same search-space rules as `mhfgen tune`, but
a candidate that faulted the GPU would take the process's context with it, which a separate
`mhfgen tune` process survives; that is why recording and `mhfgen tune --from-record` are
the default path and this one is opt-in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import torch

from .. import device as _device
from .. import paths
from ..record import TUNE_ON_MISS_ENV, register_miss_tuner
from ..spec import KernelSpec
from .db import TuningDB
from .lookup import Choice
from .problem import DeviceFacts, TuningProblem
from .search import SearchSettings, Tuner, describe_config, tuning_units
from .workers import build_timer

log = logging.getLogger(__name__)

TRIALS_ENV = "MHFGEN_TUNE_ON_MISS_TRIALS"
DEFAULT_TRIALS = 8

_tried: set[tuple] = set()
_lock = threading.Lock()
_local = threading.local()


def trials() -> int:
    """The per-key budget: $MHFGEN_TUNE_ON_MISS_TRIALS (a positive int), else 8."""
    text = os.environ.get(TRIALS_ENV, "")
    if not text:
        return DEFAULT_TRIALS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        log.warning(
            "mhfgen: %s=%r is not a positive int; using %d", TRIALS_ENV, text, DEFAULT_TRIALS
        )
        return DEFAULT_TRIALS
    return value


def tune_missing(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice | None:
    """Tune (kernel, spec, tokens) on `device` once per process; the new winner as an
    exact choice of the user database, or None (skipped, already tried, or failed)."""
    key = (kernel, spec, tokens, _device.gpu_name(device), _device.compute_capability(device))
    with _lock:
        if key in _tried:
            return None
        _tried.add(key)
    if getattr(_local, "active", False):
        log.debug("mhfgen: not tuning %s on a miss inside a running search", kernel)
        return None
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        log.warning(
            "mhfgen: %s=1 but %s %s at %d tokens was first seen inside a CUDA graph "
            "capture; not tuning it there",
            TUNE_ON_MISS_ENV,
            kernel,
            spec.key(),
            tokens,
        )
        return None
    if device.type != "cuda" and spec.dtype == "bfloat16":
        log.warning(
            "mhfgen: not tuning %s on a miss: bfloat16 does not run in Triton's interpreter", kernel
        )
        return None
    _local.active = True
    try:
        with _own_inputs_mode(device):
            return _tune(kernel, spec, tokens, device)
    except Exception as exc:  # noqa: BLE001 - a failed search keeps the fallback choice
        log.warning(
            "mhfgen: tuning %s %s at %d tokens on a miss failed (%s: %s); using "
            "the fallback config",
            kernel,
            spec.key(),
            tokens,
            type(exc).__name__,
            exc,
        )
        return None
    finally:
        _local.active = False


def _own_inputs_mode(device: torch.device):
    """The autograd state the search needs, whatever the caller's: a miss is met inside
    a training call's forward (an autograd Function runs with grad off), its backward
    (grad off again), torch.no_grad or torch.inference_mode, and under autocast. The
    search builds its own inputs, detached from the caller's graph (mhfgen.tuning.workload),
    and needs gradients of them for the float64 reference of the backward kernels, at the
    problem's own dtype: grad on, inference mode off, autocast off. The caller's tensors
    and graph are not touched."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.enable_grad())
    stack.enter_context(torch.autocast(device.type, enabled=False))
    return stack


def _tune(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice | None:
    budget = trials()
    problem = TuningProblem(spec, tokens)
    facts = DeviceFacts.of(device)
    log.warning(
        "mhfgen: %s=1: tuning %s for %s on %s in this process (%d configs), then "
        "storing the winner in %s",
        TUNE_ON_MISS_ENV,
        kernel,
        problem.describe(),
        facts.gpu_name,
        budget,
        paths.user_db_path(),
    )
    start = time.perf_counter()
    settings = SearchSettings(trials=budget, batch=min(budget, 4), top_k=2, rounds=2)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        timer = build_timer("gpu" if facts.is_gpu else "interpreter", problem, seed=0, jobs=1)
        try:
            with TuningDB.open(paths.user_db_path()) as db:
                # an op: its variants that run the problem, together (a variant: itself)
                units = tuning_units([kernel], spec, tokens)
                if not units:
                    return None
                result = Tuner(
                    problem, facts, timer, db, settings, baselines=[paths.shipped_db_path()]
                ).tune(units)[0]
        finally:
            timer.close()
    seconds = time.perf_counter() - start
    if result.winner is None:
        log.warning(
            "mhfgen: no config of %s passed in %.1f s; using the fallback config", kernel, seconds
        )
        return None
    log.warning(
        "mhfgen: tuned %s in %.1f s: %s, %.4g ms (%s)",
        kernel,
        seconds,
        describe_config(result.winner),
        result.ms,
        timer.label_for(result.variant),
    )
    return Choice(result.winner, "exact", "user", tokens, result.variant)


def forget_tried() -> None:
    """Forget which keys this process tried (tests)."""
    with _lock:
        _tried.clear()


register_miss_tuner(tune_missing)
