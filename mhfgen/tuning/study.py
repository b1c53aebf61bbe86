"""The persistent Optuna study of one kernel on one problem, asked in batches, by one
process or by several sharing one storage.

Parameters are the config fields (of the variant's config type) that take more than one
value among the valid configs (the grid keep() accepts), each an Optuna categorical over
the values that occur there. A joint study (the grid holds configs of several variants
of one op) asks define-by-run: first `variant`, a categorical over the variants, then
that variant's fields as `<stem>.<field>` (TPE with group=True, so the conditional
spaces are modelled apart); its configs are known by {"variant": stem, "config": fields}
JSON instead of their own JSON. The grid is usually a small part of the product of those values, so proposals are
repaired:

  - the configs in `first` (the built-in default) are evaluated first;
  - then `startup` configs drawn uniformly from the untried valid grid (seeded);
  - after that TPE (multivariate, constant liar for the pending trials of every process)
    proposes; a proposal that keep() prunes, or that was already evaluated, or is pending,
    is told FAIL with stage 'pruned' or 'duplicate' (TPE ignores failed trials) and
    replaced by the nearest untried valid config (a proposal whose values are no valid
    config together, as a joint study's can be, by a random untried one). Distance: sum
    over fields of |log2 a - log2 b| for numbers, 1 for differing strings and flags; ties
    are broken by the seeded generator;
  - ask_batch(n, refine=True) (the search's last trials) asks the untried configs nearest
    the best timed one instead: a local refinement of TPE's best region;
  - strategy 'grid' asks every untried valid config instead (the exhaustive baseline).

A chosen config becomes a trial through a forced ask (the sampler returns it), not
Optuna's queue of enqueued trials: SQLite storages can hand one queued trial to two
processes at once, while creating a trial is atomic in every storage.

So a config is never evaluated twice in one study: COMPLETE trials are distinct timed
configs (value: median ms), FAIL trials with a failure stage are distinct failed ones.
Trial user attributes: `config` (the config's JSON: the claim), `worker` (host:pid),
`heartbeat` (epoch seconds), and once told `error`, `timer`, `stage`, `reason`.

Sharing (shared=True: several processes, on one host or several, ask from one storage):
before every ask the study is re-read from the storage, so configs other processes
evaluated or are evaluating (RUNNING trials claiming a config) are not asked again. Two
processes that claim one config at the same moment both see the other's claim and both
give it up (it stays untried, to be asked later), so neither evaluates it twice; and a
claim is given up as 'surplus' when the trials before it (by trial number, which every
storage assigns atomically) already fill the budget, so the workers together evaluate
exactly `limit` configs. A RUNNING trial is stale, told FAIL without a stage and its
config retried, when its worker was on this host and is gone, or when its heartbeat
(renewed every HEARTBEAT_S by a thread of the worker) is older than STALE_S.

Persistence: with a storage URL (an SQLite file per problem under the cache dir by
default; any Optuna storage for several hosts) every tell is stored at once; re-opening
the study restores what was evaluated. Unshared, trials left RUNNING by an interrupted
process are told FAIL without a stage and retried at once. `fresh` starts a new
generation of the study (name suffix '#N') and deletes the old one, so the trial numbers
of a fresh start never collide with those already recorded in the tuning database.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from .outcome import Failure

log = logging.getLogger(__name__)

#: FAIL stages of proposals that were never evaluated
NOT_EVALUATED = ("pruned", "duplicate", "surplus")
#: a worker renews the heartbeat of its open trials this often (seconds)
HEARTBEAT_S = 30.0
#: a RUNNING trial whose heartbeat is older than this is stale (seconds)
STALE_S = 300.0
#: separates a study's name from its generation (see `fresh`)
GENERATION_SEP = "#"


def _host_id() -> str:
    """This host, as trials record it: the host name and the pid namespace (containers
    on one host that share a name have different namespaces, so their pids differ)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}" if namespace else socket.gethostname()


HOST = _host_id()


# -- storages ---------------------------------------------------------------------
def storage_for(url: str | None):
    """An Optuna storage for `url`:

    None                            in memory (one process)
    journal:PATH, or a plain PATH   a journal file (JournalFileBackend; processes on one
                                    host, or hosts sharing a file system with locks)
    sqlite:///FILE                  SQLite (a 60 s lock timeout)
    postgresql://... and other RDB  RDBStorage; a bare postgresql:// uses whichever of
    URLs                            psycopg2 or psycopg is installed (`mhfgen[postgres]`)
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    path = journal_path(url)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite:"):
        return _rdb(url, {"connect_args": {"timeout": 60}})
    return _rdb(_with_postgres_driver(url), {"pool_pre_ping": True})


class StudyBusyError(RuntimeError):
    """Another process is tuning from the same private study file; str() is one line."""


@contextmanager
def study_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of the study file `path` (`path` + '.lock', through filelock: an
    exclusive flock, the file opened with O_NOFOLLOW) for the duration, or raise
    StudyBusyError at once when another process holds it.

    An unshared study (`mhfgen tune` alone, the default per-problem file) belongs to one
    process: a second one opening it would fail the first's running trials as
    interrupted (ConfigStudy._restore) and evaluate the same configs again. Processes
    that mean to share one study say so (--workers, --storage) and take no lock.
    The lock goes with the process: the kernel releases a flock when its holder dies, so
    a killed tuner leaves nothing to clean up. A lock path that is a symbolic link is
    never followed (OSError, ELOOP): it could point at any file of the user's."""
    from filelock import FileLock, Timeout

    lock_path = Path(f"{path}.lock")
    lock = FileLock(str(lock_path), timeout=0, mode=0o600)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_holder(lock_path) or "another process"
        raise StudyBusyError(
            f"{holder} is tuning this problem already (study {path}); wait for it to "
            f"finish, or share the work: run every tuner of the problem with "
            f"--storage URL, or one with --workers N"
        ) from None
    try:
        _write_holder(lock_path, f"mhfgen tune (pid {os.getpid()} on {socket.gethostname()})")
        yield
    finally:
        lock.release()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _write_holder(lock_path: Path, text: str) -> None:
    """Who holds the lock, into the lock file (opened without following a link; a
    second descriptor of the file leaves the flock as it is). Best effort."""
    try:
        fd = os.open(lock_path, os.O_WRONLY | _NOFOLLOW)
    except OSError:
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_holder(lock_path: Path) -> str:
    """The holder written by _write_holder ('' where none can be read), printable."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return ""
    try:
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)
    return "".join(c for c in text if c.isprintable())


def journal_path(url: str) -> str | None:
    """The file of a journal storage URL ('journal:///abs', 'journal:rel', a plain path),
    else None."""
    if url.startswith("journal:"):
        rest = url[len("journal:") :]
        return rest[2:] if rest.startswith("//") else rest
    return None if "://" in url else url


def _rdb(url: str, engine_kwargs: dict):
    # NOTE: two processes creating the tables of a new database at once can collide (one
    # gets 'already exists'); the second attempt finds them.
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise ValueError(
                f"{redact(url)}: no database driver for this URL ({exc}); for "
                f"PostgreSQL install mhfgen[postgres]"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - sqlalchemy's errors
            text = str(exc).lower()
            if attempt == 2 or ("already exists" not in text and "duplicate" not in text):
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def _with_postgres_driver(url: str) -> str:
    """postgresql://... with the driver that is installed (SQLAlchemy 2.0 defaults to
    psycopg2, 2.1 to psycopg); a URL naming its driver is left as it is."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        try:
            __import__(module)
        except ImportError:
            continue
        return f"postgresql+{driver}{sep}{rest}"
    raise ValueError(
        f"{redact(url)}: PostgreSQL needs a driver: pip install 'mhfgen[postgres]' "
        f"(psycopg2-binary)"
    )


def redact(url: str) -> str:
    """`url` without its password, for printing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def config_distance(a, b) -> float:
    """Sum over fields of the numbers' distance (_number_distance) or 0/1 (strings,
    flags); configs of two types are infinitely far apart."""
    if type(a) is not type(b):
        return math.inf
    total = 0.0
    for name in a.field_names():
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, (str, bool)):
            total += x != y
        else:
            total += _number_distance(x, y)
    return total


def _number_distance(x: float, y: float) -> float:
    """|log2 x - log2 y| for positive numbers. A zero is a switched-off knob (swap_ab = 0,
    no token splits): one step from 1, and one step more for each doubling past it, so
    0 -> 16 is 5."""
    if x > 0 and y > 0:
        return abs(math.log2(x) - math.log2(y))
    if x == y:
        return 0.0
    return 1.0 + abs(math.log2(max(abs(x), abs(y))))


class _ForcingSampler(BaseSampler):
    """TPE, unless a config is forced: then the next ask returns exactly its params."""

    def __init__(self, inner: BaseSampler) -> None:
        self.inner = inner
        self.forced: dict | None = None

    def infer_relative_search_space(self, study, trial):
        if self.forced is not None:
            return {}
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self.forced is not None:
            return {}
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if self.forced is not None:
            return self.forced[param_name]
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


@dataclass
class Asked:
    """A trial handed out for evaluation (open until told)."""

    trial: optuna.Trial
    config: object  # the variant's config

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass(frozen=True)
class Evaluated:
    """One evaluated trial as the storage holds it (for the tuning database)."""

    number: int
    config: object  # the variant's config
    ms: float | None
    failure: Failure | None
    error: float | None
    timer: str
    finished: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ConfigStudy:
    """Batches of untried valid configs for one kernel, and their outcomes.

    grid: the valid configs, in a deterministic order; first: configs to evaluate first
    (the built-in default); strategy: 'optuna' or 'grid'; shared: other processes ask
    from the same storage (see the module doc); worker: this process's index among them
    (it offsets the seeds, so workers propose different configs).
    """

    def __init__(
        self,
        name: str,
        storage_url: str | None,
        grid: list,
        first: list = (),
        strategy: str = "optuna",
        seed: int = 0,
        startup: int = 8,
        fresh: bool = False,
        shared: bool = False,
        worker: int = 0,
    ) -> None:
        if strategy not in ("optuna", "grid"):
            raise ValueError(f"strategy must be 'optuna' or 'grid', got {strategy!r}")
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.strategy, self.shared, self.worker = strategy, shared, worker
        self.grid = list(grid)
        # one config type: parameters are its fields; several (the variants of one op):
        # 'variant' first, then that variant's fields as '<stem>.<field>' (define-by-run)
        self._types = {t.variant: t for t in dict.fromkeys(type(c) for c in self.grid)}
        self.joint = len(self._types) > 1
        self._grid_keys = {self.key_of(c) for c in self.grid}
        self._by_key = {self.key_of(c): c for c in self.grid}
        self._fixed: dict[str, dict] = {}
        self._per: dict[str, dict[str, CategoricalDistribution]] = {}
        for stem, config_type in self._types.items():
            configs = [c for c in self.grid if type(c) is config_type]
            choices = {
                n: sorted({getattr(c, n) for c in configs}) for n in config_type.field_names()
            }
            self._fixed[stem] = {n: v[0] for n, v in choices.items() if len(v) == 1}
            self._per[stem] = {
                n: CategoricalDistribution(v) for n, v in choices.items() if len(v) > 1
            }
        if self.joint:
            self.distributions = {"variant": CategoricalDistribution(sorted(self._types))}
            for stem, dists in self._per.items():
                self.distributions.update({f"{stem}.{n}": d for n, d in dists.items()})
        else:
            self.distributions = next(iter(self._per.values()), {})
        self.startup = startup
        self._rng = random.Random(seed if worker == 0 else f"{seed}/worker{worker}")
        self._first = [c for c in first if self.key_of(c) in self._grid_keys]
        self._repair_from = None
        self._repair_any = False
        self.storage = storage_for(storage_url)
        self.name = self._generation(name, fresh)
        with warnings.catch_warnings():  # group=True is marked experimental in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._sampler = _ForcingSampler(
                optuna.samplers.TPESampler(
                    seed=seed + 7919 * worker,
                    multivariate=True,
                    constant_liar=True,
                    n_startup_trials=startup,
                    group=self.joint,
                )
            )
        self.study = optuna.create_study(
            study_name=self.name,
            storage=self.storage,
            sampler=self._sampler,
            direction="minimize",
            load_if_exists=True,
        )
        self.outcomes: dict[str, float | Failure] = {}
        self._claims: dict[str, list[int]] = {}  # config -> numbers of others' RUNNING trials
        self._running: list[int] = []  # numbers of others' RUNNING trials
        self._open: dict[int, Asked] = {}  # this process's trials, not yet told
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if shared:
            self._drain_waiting()
            self.refresh()
        else:
            self._restore()
        self.resumed = len(self.outcomes)

    # -- naming ------------------------------------------------------------------
    def _generation(self, base: str, fresh: bool) -> str:
        """The name of the study's current generation; with `fresh`, a new one."""
        names = [
            n
            for n in optuna.get_all_study_names(self.storage)
            if n == base or n.startswith(base + GENERATION_SEP)
        ]

        def number(name: str) -> int:
            tail = name[len(base) + 1 :]
            return int(tail) if tail.isdigit() else 0

        current = max((number(n) for n in names), default=0)
        if not fresh or not names:
            return base if current == 0 else f"{base}{GENERATION_SEP}{current}"
        new = f"{base}{GENERATION_SEP}{current + 1}"
        try:
            optuna.create_study(study_name=new, storage=self.storage, direction="minimize")
        except DuplicatedStudyError:
            pass
        for old in names:
            try:
                optuna.delete_study(study_name=old, storage=self.storage)
            except KeyError:
                pass
        return new

    # -- state -------------------------------------------------------------------
    def _restore(self) -> None:
        """Unshared: load outcomes of earlier runs; fail trials an interrupted run left
        RUNNING (no other process uses this study)."""
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state == TrialState.RUNNING:
                self.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                log.info(
                    "%s: trial %d was interrupted; its config will be retried",
                    self.name,
                    trial.number,
                )
                continue
            self._record(trial)

    def _record(self, trial) -> None:
        key = trial.user_attrs.get("config")
        if key is None:
            return
        if trial.state == TrialState.COMPLETE:
            self.outcomes[key] = float(trial.value)
        elif trial.state == TrialState.FAIL:
            stage = trial.user_attrs.get("stage")
            if stage and stage not in NOT_EVALUATED:
                self.outcomes[key] = Failure(stage, trial.user_attrs.get("reason", ""))

    def _drain_waiting(self) -> None:
        """Fail trials left in Optuna's queue by older mhfgen versions (nothing is
        enqueued any more; two processes could pop one queued trial from SQLite)."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except (UpdateFinishedTrialError, RuntimeError):
                pass

    def refresh(self, mine: int | None = None) -> None:
        """Shared: re-read outcomes and other processes' claims from the storage, and fail
        stale RUNNING trials (their configs are retried). `mine`: a trial this process
        is claiming (not another's)."""
        if not self.shared:
            return
        self.outcomes, self._claims, self._running = {}, {}, []
        now = time.time()
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state == TrialState.RUNNING:
                if trial.number in self._open or trial.number == mine:
                    continue
                if self._stale(trial, now):
                    self._fail_stale(trial)
                    continue
                self._running.append(trial.number)
                key = trial.user_attrs.get("config")
                if key is not None:
                    self._claims.setdefault(key, []).append(trial.number)
            else:
                self._record(trial)

    @staticmethod
    def _stale(trial, now: float) -> bool:
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host == HOST and pid.isdigit() and not _pid_alive(int(pid)):
            return True
        beat = trial.user_attrs.get("heartbeat")
        if beat is None and trial.datetime_start is not None:
            beat = trial.datetime_start.timestamp()  # naive local time, as Optuna stores it
        return beat is not None and now - float(beat) > STALE_S

    def _fail_stale(self, trial) -> None:
        try:
            self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            return
        log.warning(
            "%s: trial %d (worker %s) stopped answering; its config will be retried",
            self.name,
            trial.number,
            trial.user_attrs.get("worker", "unknown"),
        )

    def timed(self) -> dict[str, float]:
        """config JSON -> median ms of every timed config."""
        return {k: v for k, v in self.outcomes.items() if isinstance(v, float)}

    def evaluated_count(self) -> int:
        return sum(1 for k in self.outcomes if k in self._grid_keys)

    def in_flight(self) -> int:
        """Configs other processes are evaluating now (shared studies)."""
        return sum(1 for k in self._claims if k not in self.outcomes)

    def claimed(self) -> list[str]:
        """Configs other processes are evaluating now (shared studies)."""
        return [k for k in self._claims if k not in self.outcomes]

    def untried(self, pending: set[str] = frozenset()) -> list:
        return [
            c
            for c in self.grid
            if self.key_of(c) not in self.outcomes and self.key_of(c) not in pending
        ]

    def evaluated_trials(self) -> list[Evaluated]:
        """Every evaluated trial as stored (all processes'), by trial number."""
        out = []
        for trial in self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)
        ):
            key = trial.user_attrs.get("config")
            stage = trial.user_attrs.get("stage")
            if key is None or key not in self._grid_keys:
                continue
            if trial.state == TrialState.FAIL and (not stage or stage in NOT_EVALUATED):
                continue
            failure = (
                None
                if trial.state == TrialState.COMPLETE
                else Failure(stage, trial.user_attrs.get("reason", ""))
            )
            finished = trial.datetime_complete
            out.append(
                Evaluated(
                    trial.number,
                    self._by_key[key],
                    float(trial.value) if failure is None else None,
                    failure,
                    trial.user_attrs.get("error"),
                    trial.user_attrs.get("timer", ""),
                    finished.astimezone(timezone.utc).isoformat(timespec="seconds")
                    if finished
                    else "",
                )
            )
        return sorted(out, key=lambda e: e.number)

    # -- keys ------------------------------------------------------------------
    def key_of(self, config) -> str:
        """The text a config is known by in this study (its trials' `config` attribute):
        its JSON; in a joint study {"variant": stem, "config": its fields}."""
        if not self.joint:
            return config.to_json()
        return json.dumps({"variant": config.variant, "config": config.as_dict()}, sort_keys=True)

    def config_of(self, key: str):
        """The config of a key (of this study's grid, or one parsed from its text)."""
        config = self._by_key.get(key)
        if config is not None:
            return config
        from .. import registry

        data = json.loads(key)
        if self.joint:
            return registry.get(data["variant"]).config_from_dict(data["config"])
        return next(iter(self._types.values())).from_dict(data)

    # -- asking ------------------------------------------------------------------
    def _params(self, config) -> dict:
        if not self.joint:
            return {n: getattr(config, n) for n in self.distributions}
        stem = config.variant
        return {"variant": stem, **{f"{stem}.{n}": getattr(config, n) for n in self._per[stem]}}

    def _config(self, params: dict):
        if self.joint:
            stem = params["variant"]
            values = {**self._fixed[stem], **{n: params[f"{stem}.{n}"] for n in self._per[stem]}}
        else:
            stem = next(iter(self._types))
            values = {**self._fixed[stem], **params}
        config_type = self._types[stem]
        return config_type(**{n: values[n] for n in config_type.field_names()})

    def _ask(self, forced, **attrs):
        self._sampler.forced = None if forced is None else self._params(forced)
        try:
            if self.joint:  # define-by-run: the variant, then that variant's knobs
                trial = self.study.ask()
                stem = trial.suggest_categorical("variant", sorted(self._types))
                for name, dist in self._per[stem].items():
                    trial.suggest_categorical(f"{stem}.{name}", dist.choices)
            else:
                trial = self.study.ask(self.distributions)
        finally:
            self._sampler.forced = None
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return trial

    def _skip(self, trial, stage: str, reason: str) -> None:
        try:
            trial.set_user_attr("stage", stage)
            trial.set_user_attr("reason", reason)
        except UpdateFinishedTrialError:  # failed meanwhile by another process
            return
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def best(self):
        """The timed config with the lowest median so far."""
        timed = self.timed()
        if not timed:
            return None
        key = min(timed, key=timed.get)
        return self._by_key.get(key)

    def _choose(self, untried: list, busy: set[str], refine: bool) -> tuple[object, dict]:
        """The config to force next (None: TPE proposes) and the trial attributes."""
        for config in self._first:
            if self.key_of(config) not in self.outcomes and self.key_of(config) not in busy:
                return config, {}
        if self._repair_from is not None:
            bad, self._repair_from = self._repair_from, None
            return self._nearest(untried, bad), {"repaired_from": self.key_of(bad)}
        if self._repair_any:  # the proposal was no config at all: any untried one
            self._repair_any = False
            return self._rng.choice(untried), {"repaired_from": "invalid"}
        if self.strategy == "grid":
            return (untried[0] if self.worker == 0 else self._rng.choice(untried)), {}
        best = self.best() if refine else None
        if best is not None:
            return self._nearest(untried, best), {"refine": True}
        if len(self.outcomes) + len(busy) < self.startup:
            return self._rng.choice(untried), {}
        return None, {}

    def ask_batch(
        self, n: int, refine: bool = False, pending: list[Asked] = (), limit: int | None = None
    ) -> list[Asked]:
        """Up to `n` untried valid configs, each an open trial (see the module doc), none
        of them among `pending` (trials asked earlier for the same batch). `limit`: the
        budget of evaluated configs; a shared study never hands out more."""
        out: list[Asked] = []
        pending_keys: set[str] = {self.key_of(a.config) for a in pending}
        conflicts: set[str] = set()
        attempts = 0
        while len(out) < n and attempts < 20 * n + 50:
            attempts += 1
            self.refresh()
            busy = (
                pending_keys
                | set(self._claims)
                | conflicts
                | {self.key_of(a.config) for a in self._open.values()}
            )
            untried = self.untried(busy)
            if not untried:
                break
            forced, attrs = self._choose(untried, busy, refine)
            trial = self._ask(forced, **attrs)
            try:
                config = self._config(trial.params)
            except ValueError as exc:  # fields valid one by one, not together
                self._skip(trial, "pruned", f"not a valid config: {exc}")
                self._repair_any = True
                continue
            key = self.key_of(config)
            if key not in self._grid_keys:
                self._skip(trial, "pruned", "outside the valid grid (keep() prunes it)")
                self._repair_from = config
                continue
            if key in self.outcomes or key in busy:
                self._skip(trial, "duplicate", "already evaluated or pending")
                self._repair_from = config
                continue
            try:
                trial.set_user_attr("config", key)
                if self.shared:
                    trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
                    trial.set_user_attr("heartbeat", time.time())
            except UpdateFinishedTrialError:  # another process judged it stale
                conflicts.add(key)
                continue
            if self.shared:
                verdict = self._check_claim(trial.number, key, limit)
                if verdict == "conflict":
                    self._skip(trial, "duplicate", "claimed by another worker at the same time")
                    conflicts.add(key)
                    continue
                if verdict == "surplus":
                    self._skip(trial, "surplus", "the budget is filled by earlier trials")
                    break
            asked = Asked(trial, config)
            out.append(asked)
            pending_keys.add(key)
            with self._lock:
                self._open[trial.number] = asked
            self._start_heartbeat()
        return out

    def _check_claim(self, number: int, key: str, limit: int | None) -> str:
        """'ok', 'conflict' (another process claims `key` too, or evaluated it) or
        'surplus' (earlier trials fill `limit`), read after claiming."""
        self.refresh(mine=number)
        if key in self.outcomes or self._claims.get(key):
            return "conflict"
        if limit is not None:
            before = (
                self.evaluated_count()
                + sum(1 for m in self._running if m < number)
                + sum(1 for m in self._open if m < number)
            )
            if before >= limit:
                return "surplus"
        return "ok"

    def _nearest(self, configs: list, target):
        """The config nearest `target`; ties broken by the seeded generator."""
        dist = [config_distance(c, target) for c in configs]
        low = min(dist)
        return self._rng.choice([c for c, d in zip(configs, dist) if d <= low + 1e-9])

    # -- heartbeat ---------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        if not self.shared or self._heartbeat is not None:
            return
        self._heartbeat = threading.Thread(
            target=self._beat, daemon=True, name=f"mhfgen-heartbeat-{self.worker}"
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                ids = [a.trial._trial_id for a in self._open.values()]
            for trial_id in ids:
                try:
                    self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
                except Exception:  # noqa: BLE001 - told meanwhile, or the storage hiccups
                    pass

    def close(self) -> None:
        """Stop the heartbeat thread (open trials should be told or abandoned first)."""
        self._stop.set()

    # -- telling -----------------------------------------------------------------
    def _attrs(self, asked: Asked, error: float | None, timer: str) -> None:
        try:
            if error is not None:
                asked.trial.set_user_attr("error", float(error))
            if timer:
                asked.trial.set_user_attr("timer", timer)
        except UpdateFinishedTrialError:
            pass

    def _close_trial(self, asked: Asked) -> None:
        with self._lock:
            self._open.pop(asked.number, None)

    def tell_time(
        self, asked: Asked, ms: float, error: float | None = None, timer: str = ""
    ) -> None:
        self._attrs(asked, error, timer)
        self.study.tell(asked.trial, ms, skip_if_finished=True)
        self.outcomes[self.key_of(asked.config)] = float(ms)
        self._close_trial(asked)

    def tell_failure(
        self, asked: Asked, failure: Failure, error: float | None = None, timer: str = ""
    ) -> None:
        self._attrs(asked, error, timer)
        self._skip(asked.trial, failure.stage, failure.reason)
        self.outcomes[self.key_of(asked.config)] = failure
        self._close_trial(asked)

    def abandon(self, asked: list[Asked]) -> None:
        """Fail open trials without a stage (they will be retried), e.g. on Ctrl-C."""
        for a in asked:
            self.study.tell(a.trial, state=TrialState.FAIL, skip_if_finished=True)
            self._close_trial(a)

    # -- the declared winner ---------------------------------------------------------
    def declared(self, evaluated: int) -> dict | None:
        """The winner a process declared after the side-by-side timing of this study's
        `evaluated` configs, if one did (so every host stores the same winner)."""
        found = self.study.user_attrs.get("declared")
        if isinstance(found, dict) and found.get("evaluated") == evaluated:
            return found
        return None

    def declare(self, record: dict) -> None:
        self.study.set_user_attr("declared", record)


def study_name(
    kernel: str,
    template_hash: str,
    problem_key: str,
    device_key: str,
    triton_version: str,
    strategy: str,
) -> str:
    """The study's name: everything its trials depend on."""
    return json.dumps(
        [kernel, template_hash, problem_key, device_key, triton_version, strategy],
        separators=(",", ":"),
    )
