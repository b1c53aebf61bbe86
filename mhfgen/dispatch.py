"""Runtime choice of a kernel variant and its config per op (or variant), spec and shape.

`explain_choice(name, ...)` takes an op of mhfgen.registry.OPS ('fwd', 'bwd_dq',
'bwd_dkv': the variant is chosen too) or a variant stem (that variant only: its
launcher called directly). The variants considered are those whose `unsupported()` is
None for the call (targets, dtypes, the interpreter, shape limits). Order
(docs/CONTRACTS.md, section 4), each step tested in tests/test_dispatch.py:
    1. exact key    a winner tuned on this GPU at exactly this token count
    2. same bucket  a winner of the same shape bucket (mhfgen.tuning.buckets.shape_bucket)
    3. nearest      the winner of the same spec on this GPU nearest in log2(tokens);
                    for an op, of its preferred variant only
    4. heuristic    the default config of the preferred variant (lowest rank(spec):
                    its `preference`, unless the variant ranks itself per spec)
At steps 1-2 a winner of any considered variant qualifies; at step 3 only the preferred
variant's (a config tuned at other sizes is not carried over to a variant that ranks
below the one the heuristic would run: FP8 decode winners of the weight-only forward
would otherwise take prefill calls from the FP8-arithmetic one); between winners of one step,
the user database beats the shipped one, then (mhfgen.tuning.lookup) the larger tuned
token count, then the lower stored time (so the faster variant at that shape). Winners
must match their variant's template hash (or code hash), the GPU name, compute
capability and Triton version. A winner of steps 2-3 (tuned at another token count) is
taken only where its variant's rules accept it at this call's token count and SM count
(`prune_reason`: a prefill config that would leave most SMs idle at decode, say);
otherwise step 4 decides.

The databases are read once per process and GPU, on the first call that needs them, and
each decision is cached per (name, spec, tokens, device): after the first call a call
costs one dict lookup. A database that cannot be read is logged as a warning and skipped;
it never breaks the caller, and neither does a stored config that fails to compile or
launch: the launcher reports it (reject_tuned), it is logged once and the heuristic runs
in its place. MHFGEN_NO_TUNED=1 switches tuned configs off (heuristics only, for
debugging); call clear_cache() after changing it or the database. Caches built on the
choices (the launchers' plans) subscribe with on_clear(): this module imports no
launcher.

A decision whose source is not 'exact' goes through mhfgen.record.on_miss, once per key:
MHFGEN_RECORD=PATH appends it to PATH for `mhfgen tune --from-record PATH`, and
MHFGEN_TUNE_ON_MISS=1 tunes it in this process (through the hook the tuner registers,
mhfgen.record.miss_tuner: this module imports nothing of the tuner).

The backward has two forms (`backward_form`): the one-pass op 'bwd', or the split pair
'bwd_dq' + 'bwd_dkv'. Deterministic runs (torch.use_deterministic_algorithms(True), or
MHFGEN_DETERMINISTIC=1) take the split pair, whose dK/dU/dV run without token splits:
no atomics anywhere, so the gradients are bitwise the same run after run. Otherwise the
split pair too, unless the databases hold winners of all three ops tuned at one token
count and the one pass's time is below the sum of the split pair's (on an H200 the split
pair measured faster at 16384 tokens on every shape tried, within the one pass's
workspace budget: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from . import device as _device
from . import registry
from .env import flag
from .record import on_miss
from .spec import KernelSpec
from .tuning.lookup import Choice, TunedIndex

log = logging.getLogger(__name__)

#: set to 1 to ignore every tuning database
NO_TUNED_ENV = "MHFGEN_NO_TUNED"
#: set to 1 for bitwise-reproducible gradients (as torch.use_deterministic_algorithms)
DETERMINISTIC_ENV = "MHFGEN_DETERMINISTIC"
#: the backward's forms (see backward_form)
FUSED, SPLIT = "fused", "split"

_cache: dict[tuple, object] = {}
_choices: dict[tuple, Choice] = {}
_indices: dict[tuple[str, str], TunedIndex] = {}
#: (variant, spec, config, device) of tuned configs that failed to compile or launch
_rejected: set[tuple] = set()
#: (variant, spec, device) whose built-in config failed: the op's next variant serves them
_failed_variants: set[tuple] = set()
_lock = threading.Lock()
_on_clear: list[Callable[[], None]] = []


def on_clear(fn: Callable[[], None]) -> Callable[[], None]:
    """Call `fn` whenever clear_cache() runs (caches that hold configs chosen here)."""
    _on_clear.append(fn)
    return fn


def choose_config(kernel: str, spec: KernelSpec, tokens: int, device: torch.device):
    """The config to launch `kernel` (an op or a variant stem) with for `spec` at
    `tokens` tokens on `device` (its variant: explain_choice(...).variant)."""
    config = _cache.get((kernel, spec, tokens, device))
    if config is None:
        config = explain_choice(kernel, spec, tokens, device).config
    return config


def explain_choice(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice:
    """choose_config's decision: the variant and config, with its source ('exact',
    'bucket', 'nearest', 'heuristic'), the database layer and the token count the config
    was tuned at. `kernel`: an op (the variant is chosen) or a variant stem."""
    key = (kernel, spec, tokens, device)
    choice = _choices.get(key)
    if choice is None:
        choice = _decide(kernel, spec, tokens, device)
        if choice.source != "exact":
            choice = on_miss(kernel, spec, tokens, device, choice)
        _choices[key] = choice
        _cache[key] = choice.config
    return choice


def deterministic_requested() -> bool:
    """Whether gradients must be bitwise reproducible: torch's deterministic algorithms
    are on, or MHFGEN_DETERMINISTIC is on (mhfgen.env.flag: 1/true/yes/on)."""
    return torch.are_deterministic_algorithms_enabled() or flag(DETERMINISTIC_ENV)


def backward_form(
    spec: KernelSpec, tokens: int, device: torch.device, deterministic: bool = False
) -> str:
    """FUSED (the op 'bwd') or SPLIT ('bwd_dq' then 'bwd_dkv') for a backward call.

    FUSED only where the databases hold winners of 'bwd', 'bwd_dq' and 'bwd_dkv' tuned at
    one token count and the one pass's stored time is below the sum of the split pair's,
    and not `deterministic` (the one pass sums dq by atomics); SPLIT otherwise, the
    measured faster form where nothing is tuned. Asked once per call signature (the
    launch plans of mhfgen.kernels.backward keep the answer)."""
    if deterministic or not registry.usable("bwd", spec, tokens):
        return SPLIT
    # the stored winners only: a lookup here is not a miss to record or tune (the split
    # pair's own calls record theirs, and the one pass is tuned on request)
    fused = stored_choice("bwd", spec, tokens, device)
    if fused is None:
        return SPLIT
    dq = stored_choice("bwd_dq", spec, tokens, device)
    dkv = stored_choice("bwd_dkv", spec, tokens, device)
    if dq is None or dkv is None:
        return SPLIT
    same = dq.tuned_tokens == dkv.tuned_tokens == fused.tuned_tokens
    return FUSED if same and fused.ms < dq.ms + dkv.ms else SPLIT


def stored_choice(op: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice | None:
    """The tuned winner the dispatch order finds for `op` (steps 1-3 over the variants
    explain_choice considers), or None; no heuristic, and nothing recorded
    (mhfgen.record.on_miss)."""
    return _tuned(op, _considered(op, spec, tokens, device), spec, tokens, device)


def decide(op: str, spec: KernelSpec, tokens: int, device: torch.device) -> Choice:
    """The choice the dispatch order makes for `op` (steps 1-4), made afresh from the
    databases as they are now (read again, whatever this process cached), not cached, and
    not a miss to record or tune (mhfgen.record.on_miss). The tuner times dK/dU/dV beside
    this choice of dQ/dR (mhfgen.tuning.workload): a dQ/dR winner stored a moment before,
    in the same `mhfgen tune` run, is the one it pairs with."""
    gpu = (_device.gpu_name(device), _device.compute_capability(device))
    return _decide(op, spec, tokens, device, _load_index(*gpu))


def tuned_configs_enabled() -> bool:
    """False when MHFGEN_NO_TUNED is on (mhfgen.env.flag: 1/true/yes/on)."""
    return not flag(NO_TUNED_ENV)


def candidates(kernel: str, spec: KernelSpec, tokens: int) -> list:
    """The variants a call of `kernel` (an op or a variant stem) may run, preferred first;
    ValueError naming each variant's reason when none can. A variant's supports() may
    leave some token counts to other variants of its op (decode-sized calls, say): the
    op's choice honours that; a variant named directly runs any count it can."""
    if kernel in registry.OPS:
        variants, at = registry.variants_for(kernel), tokens
        usable = registry.usable(kernel, spec, tokens)
    else:  # a variant named directly: what it can run, token counts it would leave alone
        variants, at = [registry.get(kernel)], None
        usable = [v for v in variants if v.unsupported(spec) is None]
    if not usable:
        reasons = "; ".join(v.unsupported(spec, at) for v in variants)
        raise ValueError(
            f"no kernel variant of {kernel} runs {spec.key()} at {tokens} tokens: {reasons}"
        )
    return usable


def reject_tuned(
    kernel: str, spec: KernelSpec, tokens: int, device: torch.device, error: BaseException
) -> bool:
    """A launcher's report that the config chosen for this key (`kernel`: an op or a
    variant stem) failed to compile or launch. When that config came from a tuning
    database, it is logged (once per config) and never chosen again in this process: this
    key, and every other that would pick it, gets the built-in heuristic. Returns False
    when the choice was the heuristic already (the error is not a stored config's; the
    caller raises it)."""
    key = (kernel, spec, tokens, device)
    choice = explain_choice(kernel, spec, tokens, device)
    if choice.source == "heuristic":
        return _reject_variant(kernel, spec, tokens, device, choice, error)
    first = (choice.variant, spec, choice.config, device) not in _rejected
    _rejected.add((choice.variant, spec, choice.config, device))
    if first:
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        log.warning(
            "mhfgen: the tuned %s config %s for %s (%s database, tuned at %s tokens) "
            "failed to compile or launch (%s: %s); using the built-in heuristic "
            "instead. Re-tune with `mhfgen tune`.",
            choice.variant,
            choice.config.to_json(),
            spec.key(),
            choice.layer,
            choice.tuned_tokens,
            type(error).__name__,
            reason,
        )
    for other, made in list(_choices.items()):  # every cached decision that picked it
        if (made.variant, made.config, other[1], other[3]) == (
            choice.variant,
            choice.config,
            spec,
            device,
        ):
            _choices.pop(other, None)
            _cache.pop(other, None)
    fallback = _heuristic(candidates(kernel, spec, tokens), spec, tokens, device)
    _choices[key] = fallback
    _cache[key] = fallback.config
    return True


def _reject_variant(
    op: str,
    spec: KernelSpec,
    tokens: int,
    device: torch.device,
    choice: Choice,
    error: BaseException,
) -> bool:
    """The heuristic config of an op's preferred variant failed to compile or launch (a
    Gluon kernel on a GPU or a Triton build it was not tested on, say): where another of
    the op's variants can run the call, that variant is dropped for this spec and device in
    this process (logged once) and the call goes to the next one's heuristic. False when
    there is no other (the caller raises the error)."""
    if op not in registry.OPS:
        return False  # a variant named directly is that variant only
    rest = [
        v for v in _live(candidates(op, spec, tokens), spec, device) if v.stem != choice.variant
    ]
    if not rest:
        return False
    _failed_variants.add((choice.variant, spec, device))
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    log.warning(
        "mhfgen: %s's built-in config for %s failed to compile or launch (%s: %s); "
        "%s runs this call instead in this process",
        choice.variant,
        spec.key(),
        type(error).__name__,
        reason,
        rest[0].stem,
    )
    for other, made in list(_choices.items()):  # every cached decision that picked it
        if made.variant == choice.variant and (other[1], other[3]) == (spec, device):
            _choices.pop(other, None)
            _cache.pop(other, None)
    fallback = _decide(op, spec, tokens, device)
    _choices[(op, spec, tokens, device)] = fallback
    _cache[(op, spec, tokens, device)] = fallback.config
    return True


def _live(variants: list, spec: KernelSpec, device: torch.device) -> list:
    """`variants` less those whose built-in config failed here (see _reject_variant)."""
    return [v for v in variants if (v.stem, spec, device) not in _failed_variants]


def _decide(
    kernel: str,
    spec: KernelSpec,
    tokens: int,
    device: torch.device,
    index: TunedIndex | None = None,
) -> Choice:
    variants = _considered(kernel, spec, tokens, device)
    found = _tuned(kernel, variants, spec, tokens, device, index)
    return found if found is not None else _heuristic(variants, spec, tokens, device)


def _considered(kernel: str, spec: KernelSpec, tokens: int, device: torch.device) -> list:
    """The variants a decision for `kernel` looks at: candidates(), less (for an op) those
    whose built-in config failed here, unless that leaves none."""
    variants = candidates(kernel, spec, tokens)
    if kernel in registry.OPS:
        variants = _live(variants, spec, device) or variants
    return variants


def _tuned(
    kernel: str,
    variants: list,
    spec: KernelSpec,
    tokens: int,
    device: torch.device,
    index: TunedIndex | None = None,
) -> Choice | None:
    """Steps 1-3 of the dispatch order over `variants`: the stored winner, or None (tuned
    configs off, nothing stored, or the winner failed earlier in this process). `index`:
    the winners to search (default: the databases as this process first read them)."""
    if not tuned_configs_enabled():
        return None
    index = index if index is not None else _index_for(device)
    # a nearest tuned shape is the preferred variant's or none (the module doc, step 3)
    stems = [v.stem for v in variants]
    found = index.find(stems, spec, tokens, nearest_of=stems[:1])
    if found is not None and found.source != "exact":
        variant = registry.get(found.variant)
        reason = variant.prune_reason(spec, found.config, tokens, _device.sm_count(device))
        if reason:
            log.debug(
                "%s %s tokens=%d: the %s config tuned at %d tokens does not fit here (%s), "
                "using the heuristic",
                kernel,
                spec.key(),
                tokens,
                found.source,
                found.tuned_tokens,
                reason,
            )
            return None
    if found is not None and (found.variant, spec, found.config, device) in _rejected:
        log.debug(
            "%s %s tokens=%d: the %s config failed earlier, using the heuristic",
            kernel,
            spec.key(),
            tokens,
            found.source,
        )
        return None
    if found is not None:
        log.debug(
            "%s %s tokens=%d: %s %s config from the %s database (tuned at %d tokens)",
            kernel,
            spec.key(),
            tokens,
            found.source,
            found.variant,
            found.layer,
            found.tuned_tokens,
        )
    return found


def _heuristic(variants: list, spec: KernelSpec, tokens: int, device: torch.device) -> Choice:
    """The heuristic choice: the default config of the preferred variant."""
    preferred = variants[0]
    config = preferred.default_config(spec, tokens, _device.sm_count(device))
    return Choice(config, "heuristic", variant=preferred.stem)


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
    from .tuning.db import load_layered_winners

    try:
        hashes = {k: template_hash(k) for k in registry.stems()}
        winners = load_layered_winners(gpu_name, compute_capability, triton.__version__)
    except Exception as exc:  # noqa: BLE001 - dispatch must never break the caller
        log.warning("mhfgen: cannot read the tuning databases, using built-in configs: %s", exc)
        return TunedIndex([], {})
    index = TunedIndex(winners, hashes)
    log.debug(
        "mhfgen: %d tuned configs for %s (compute capability %s)",
        len(index),
        gpu_name,
        compute_capability,
    )
    return index


def clear_cache() -> None:
    """Forget every cached choice and the loaded databases (after either changed)."""
    with _lock:
        _cache.clear()
        _choices.clear()
        _indices.clear()
        _rejected.clear()
        _failed_variants.clear()
    for fn in _on_clear:  # the launchers' plans hold configs chosen here
        fn()


registry.on_change(clear_cache)
