"""The persistent Optuna study of one kernel on one problem, asked in batches.

Parameters are the LaunchConfig fields that take more than one value among the valid
configs (the grid keep() accepts), each an Optuna categorical over the values that occur
there. The grid is usually a small part of the product of those values, so proposals are
repaired:

  - the first `startup` configs are drawn uniformly from the untried valid grid (seeded),
    and enqueued so Optuna records them as ordinary trials;
  - after that TPE (multivariate, constant liar for the pending trials of a batch)
    proposes; a proposal that keep() prunes, or that was already evaluated, or is pending
    in this batch, is told FAIL with stage 'pruned' or 'duplicate' (TPE ignores failed
    trials) and replaced by the nearest untried valid config, enqueued and asked again.
    Distance: sum over fields of |log2 a - log2 b| for numbers, 1 for differing strings
    and flags; ties are broken by the seeded generator;
  - ask_batch(n, refine=True) (the search's last trials) enqueues the untried configs
    nearest the best timed one instead: a local refinement of TPE's best region;
  - strategy 'grid' enqueues every untried valid config instead (the exhaustive baseline).

So a config is never evaluated twice in one study: COMPLETE trials are distinct timed
configs (value: median ms), FAIL trials with a failure stage are distinct failed ones.

Persistence: with a storage URL (an SQLite file per problem under the cache dir) every
tell is stored at once; re-opening the study restores what was evaluated. Trials left
RUNNING by an interrupted process are told FAIL without a stage and retried. (Two live
processes tuning the same problem would fail each other's running trials this way; they
tolerate it, but tune different problems in parallel, not the same one.)
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, fields

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from ..spec import LaunchConfig
from .outcome import Failure

log = logging.getLogger(__name__)

_FIELDS = tuple(f.name for f in fields(LaunchConfig))
#: FAIL stages of proposals that were never evaluated
NOT_EVALUATED = ("pruned", "duplicate")


def storage_for(url: str | None):
    """An Optuna storage: RDB (SQLite with a 60 s lock timeout) for a URL, else memory."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def config_distance(a: LaunchConfig, b: LaunchConfig) -> float:
    """Sum over fields of |log2 a - log2 b| (numbers) or 0/1 (strings, flags)."""
    total = 0.0
    for name in _FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, (str, bool)):
            total += x != y
        else:
            total += abs(math.log2(x) - math.log2(y))
    return total


@dataclass
class Asked:
    """A trial handed out for evaluation (open until told)."""

    trial: optuna.Trial
    config: LaunchConfig

    @property
    def number(self) -> int:
        return self.trial.number


class ConfigStudy:
    """Batches of untried valid configs for one kernel, and their outcomes.

    grid: the valid configs, in a deterministic order; first: configs to evaluate first
    (the built-in default); strategy: 'optuna' or 'grid'.
    """

    def __init__(self, name: str, storage_url: str | None, grid: list[LaunchConfig],
                 first: list[LaunchConfig] = (),
                 strategy: str = "optuna", seed: int = 0, startup: int = 8,
                 fresh: bool = False) -> None:
        if strategy not in ("optuna", "grid"):
            raise ValueError(f"strategy must be 'optuna' or 'grid', got {strategy!r}")
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.name, self.strategy = name, strategy
        self.grid = list(grid)
        self._grid_keys = {c.to_json() for c in self.grid}
        choices = {n: sorted({getattr(c, n) for c in self.grid}) for n in _FIELDS}
        self._fixed = {n: v[0] for n, v in choices.items() if len(v) == 1}
        self.distributions = {n: CategoricalDistribution(v)
                              for n, v in choices.items() if len(v) > 1}
        self.startup = startup
        self._rng = random.Random(seed)
        storage = storage_for(storage_url)
        if fresh:
            try:
                optuna.delete_study(study_name=name, storage=storage)
            except KeyError:
                pass
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                             n_startup_trials=startup)
        self.study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                         direction="minimize", load_if_exists=True)
        self.outcomes: dict[str, float | Failure] = {}
        self.resumed = self._restore()
        self._waiting = {self._config(t.system_attrs.get("fixed_params", {})).to_json()
                         for t in self.study.get_trials(deepcopy=False,
                                                        states=(TrialState.WAITING,))}
        for config in first:
            if config.to_json() in self._grid_keys:
                self._enqueue(config)
        if strategy == "grid":
            for config in self.grid:
                self._enqueue(config)

    # -- state -------------------------------------------------------------------
    def _restore(self) -> int:
        """Load outcomes of earlier runs; fail trials an interrupted run left RUNNING."""
        for trial in self.study.get_trials(deepcopy=False):
            key = trial.user_attrs.get("config")
            if trial.state == TrialState.RUNNING:
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                log.info("%s: trial %d was interrupted; its config will be retried",
                         self.name, trial.number)
            elif key is None:
                continue
            elif trial.state == TrialState.COMPLETE:
                self.outcomes[key] = float(trial.value)
            elif trial.state == TrialState.FAIL:
                stage = trial.user_attrs.get("stage")
                if stage and stage not in NOT_EVALUATED:
                    self.outcomes[key] = Failure(stage, trial.user_attrs.get("reason", ""))
        return len(self.outcomes)

    def timed(self) -> dict[str, float]:
        """config JSON -> median ms of every timed config."""
        return {k: v for k, v in self.outcomes.items() if isinstance(v, float)}

    def untried(self, pending: set[str] = frozenset()) -> list[LaunchConfig]:
        return [c for c in self.grid
                if c.to_json() not in self.outcomes and c.to_json() not in pending]

    # -- asking ------------------------------------------------------------------
    def _params(self, config: LaunchConfig) -> dict:
        return {n: getattr(config, n) for n in self.distributions}

    def _enqueue(self, config: LaunchConfig) -> None:
        key = config.to_json()
        if key not in self.outcomes and key not in self._waiting:
            self.study.enqueue_trial(self._params(config))
            self._waiting.add(key)

    def _config(self, params: dict) -> LaunchConfig:
        values = {**self._fixed, **params}
        return LaunchConfig(**{n: values[n] for n in _FIELDS})

    def _skip(self, trial, stage: str, reason: str) -> None:
        try:
            trial.set_user_attr("stage", stage)
            trial.set_user_attr("reason", reason)
        except UpdateFinishedTrialError:  # failed meanwhile by another process's restore
            return
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def best(self) -> LaunchConfig | None:
        """The timed config with the lowest median so far."""
        timed = self.timed()
        if not timed:
            return None
        key = min(timed, key=timed.get)
        return next(c for c in self.grid if c.to_json() == key) if key in self._grid_keys \
            else None

    def ask_batch(self, n: int, refine: bool = False,
                  pending: list[Asked] = ()) -> list[Asked]:
        """Up to `n` untried valid configs, each an open trial (see the module doc), none
        of them among `pending` (trials asked earlier for the same batch)."""
        out: list[Asked] = []
        pending: set[str] = {a.config.to_json() for a in pending}
        attempts = 0
        while len(out) < n and attempts < 20 * n + 50:
            attempts += 1
            untried = self.untried(pending)
            if not untried:
                break
            if self.strategy == "optuna" and not self._has_waiting():
                best = self.best() if refine else None
                if best is not None:
                    self.study.enqueue_trial(self._params(self._nearest(untried, best)),
                                             user_attrs={"refine": True})
                elif len(self.outcomes) + len(pending) < self.startup:
                    self.study.enqueue_trial(self._params(self._rng.choice(untried)))
            trial = self.study.ask(self.distributions)
            config = self._config(trial.params)
            key = config.to_json()
            if key in self._grid_keys and key not in self.outcomes and key not in pending:
                trial.set_user_attr("config", key)
                out.append(Asked(trial, config))
                pending.add(key)
                continue
            if key not in self._grid_keys:
                self._skip(trial, "pruned", "outside the valid grid (keep() prunes it)")
            else:
                self._skip(trial, "duplicate", "already evaluated or pending")
            repaired = self._nearest(untried, config)
            self.study.enqueue_trial(self._params(repaired),
                                     user_attrs={"repaired_from": key})
        return out

    def _nearest(self, configs: list[LaunchConfig], target: LaunchConfig) -> LaunchConfig:
        """The config nearest `target`; ties broken by the seeded generator."""
        dist = [config_distance(c, target) for c in configs]
        low = min(dist)
        return self._rng.choice([c for c, d in zip(configs, dist) if d <= low + 1e-9])

    def _has_waiting(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    # -- telling -----------------------------------------------------------------
    def tell_time(self, asked: Asked, ms: float) -> None:
        self.study.tell(asked.trial, ms, skip_if_finished=True)
        self.outcomes[asked.config.to_json()] = float(ms)

    def tell_failure(self, asked: Asked, failure: Failure) -> None:
        self._skip(asked.trial, failure.stage, failure.reason)
        self.outcomes[asked.config.to_json()] = failure

    def abandon(self, asked: list[Asked]) -> None:
        """Fail open trials without a stage (they will be retried), e.g. on Ctrl-C."""
        for a in asked:
            self.study.tell(a.trial, state=TrialState.FAIL, skip_if_finished=True)


def study_name(kernel: str, template_hash: str, problem_key: str, device_key: str,
               triton_version: str, strategy: str) -> str:
    """The study's name: everything its trials depend on."""
    return json.dumps([kernel, template_hash, problem_key, device_key, triton_version, strategy],
                      separators=(",", ":"))
