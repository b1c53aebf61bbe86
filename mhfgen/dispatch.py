"""Runtime choice of a LaunchConfig per kernel, spec and shape.

Order (docs/CONTRACTS.md, section 4), each step tested in tests/test_dispatch.py:
    1. exact key    a winner tuned on this GPU at exactly this token count
    2. same bucket  a winner of the same shape bucket (mhfgen.tuning.buckets.shape_bucket)
    3. nearest      the winner of the same spec on this GPU nearest in log2(tokens)
    4. heuristic    mhfgen.heuristics.default_config
Winners come from the user database ($MHFGEN_DB) over the shipped one and must match the
kernel's template hash, the GPU name, compute capability and Triton version.

The databases are read once per process and GPU, on the first call that needs them, and
each decision is cached per (kernel, spec, tokens, device): after the first call a call
costs one dict lookup. A database that cannot be read is logged as a warning and skipped;
it never breaks the caller, and neither does a stored config that fails to compile or
launch: the launcher reports it (reject_tuned), it is logged once and the heuristic runs
in its place. MHFGEN_NO_TUNED=1 switches tuned configs off (heuristics only,
for debugging); call clear_cache() after changing it or the database.

A decision whose source is not 'exact' goes through mhfgen.record.on_miss, once per key:
MHFGEN_RECORD=PATH appends it to PATH for `mhfgen tune --from-record PATH`, and
MHFGEN_TUNE_ON_MISS=1 tunes it in this process (mhfgen.tuning.on_miss).
"""
from __future__ import annotations

import logging
import os
import threading

import torch

from . import device as _device
from .heuristics import default_config
from .record import on_miss
from .spec import KernelSpec, LaunchConfig
from .tuning.lookup import Choice, TunedIndex

log = logging.getLogger(__name__)

#: set to 1 to ignore every tuning database
NO_TUNED_ENV = "MHFGEN_NO_TUNED"

_cache: dict[tuple, LaunchConfig] = {}
_choices: dict[tuple, Choice] = {}
_indices: dict[tuple[str, str], TunedIndex] = {}
#: (kernel, spec, config, device) of tuned configs that failed to compile or launch
_rejected: set[tuple] = set()
_lock = threading.Lock()


def choose_config(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> LaunchConfig:
    """The LaunchConfig to launch `kernel` with for `spec` at `tokens` tokens on `device`."""
    config = _cache.get((kernel, spec, tokens, device))
    if config is None:
        config = explain_choice(kernel, spec, tokens, device).config
    return config


def explain_choice(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice:
    """choose_config's decision with its source ('exact', 'bucket', 'nearest',
    'heuristic'), the database layer and the token count the config was tuned at."""
    key = (kernel, spec, tokens, device)
    choice = _choices.get(key)
    if choice is None:
        choice = _decide(kernel, spec, tokens, device)
        if choice.source != "exact":
            choice = on_miss(kernel, spec, tokens, device, choice)
        _choices[key] = choice
        _cache[key] = choice.config
    return choice


def tuned_configs_enabled() -> bool:
    """False when MHFGEN_NO_TUNED is set to anything but '' or '0'."""
    return os.environ.get(NO_TUNED_ENV, "") in ("", "0")


def reject_tuned(kernel: str, spec: KernelSpec, tokens: int, device: torch.device,
                 error: BaseException) -> bool:
    """A launcher's report that the config chosen for this key failed to compile or
    launch. When that config came from a tuning database, it is logged (once per config)
    and never chosen again in this process: this key, and every other that would pick
    it, gets the built-in heuristic. Returns False when the choice was the heuristic
    already (the error is not a stored config's; the caller raises it)."""
    key = (kernel, spec, tokens, device)
    choice = explain_choice(kernel, spec, tokens, device)
    if choice.source == "heuristic":
        return False
    first = (kernel, spec, choice.config, device) not in _rejected
    _rejected.add((kernel, spec, choice.config, device))
    if first:
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        log.warning("mhfgen: the tuned %s config %s for %s (%s database, tuned at %s tokens) "
                    "failed to compile or launch (%s: %s); using the built-in heuristic "
                    "instead. Re-tune with `mhfgen tune`.", kernel, choice.config.to_json(),
                    spec.key(), choice.layer, choice.tuned_tokens, type(error).__name__,
                    reason)
    fallback = Choice(default_config(kernel, spec, tokens, _device.sm_count(device)),
                      "heuristic")
    _choices[key] = fallback
    _cache[key] = fallback.config
    return True


def _decide(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice:
    if tuned_configs_enabled():
        found = _index_for(device).find(kernel, spec, tokens)
        if found is not None and (kernel, spec, found.config, device) in _rejected:
            log.debug("%s %s tokens=%d: the %s config failed earlier, using the heuristic",
                      kernel, spec.key(), tokens, found.source)
            found = None
        if found is not None:
            log.debug("%s %s tokens=%d: %s config from the %s database (tuned at %d tokens)",
                      kernel, spec.key(), tokens, found.source, found.layer, found.tuned_tokens)
            return found
    return Choice(default_config(kernel, spec, tokens, _device.sm_count(device)), "heuristic")


def _index_for(device: torch.device) -> TunedIndex:
    gpu = (_device.gpu_name(device), _device.compute_capability(device))
    index = _indices.get(gpu)
    if index is None:
        with _lock:
            index = _indices.get(gpu)
            if index is None:
                index = _load_index(*gpu)
                _indices[gpu] = index
    return index


def _load_index(gpu_name: str, compute_capability: str) -> TunedIndex:
    import triton

    from .codegen import template_hash
    from .spec import KERNELS
    from .tuning.db import load_layered_winners

    try:
        hashes = {k: template_hash(k) for k in KERNELS}
        winners = load_layered_winners(gpu_name, compute_capability, triton.__version__)
    except Exception as exc:  # noqa: BLE001 - dispatch must never break the caller
        log.warning("mhfgen: cannot read the tuning databases, using built-in configs: %s", exc)
        return TunedIndex([], {})
    index = TunedIndex(winners, hashes)
    log.debug("mhfgen: %d tuned configs for %s (compute capability %s)", len(index), gpu_name,
              compute_capability)
    return index


def clear_cache() -> None:
    """Forget every cached choice and the loaded databases (after either changed)."""
    from .kernels.common import clear_plans  # the launchers cache the configs they got

    with _lock:
        _cache.clear()
        _choices.clear()
        _indices.clear()
        _rejected.clear()
        clear_plans()
