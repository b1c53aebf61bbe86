"""The tuning loop: search each kernel's launch parameters for one problem.

For each kernel (forward and both backward kernels in one run):
  1. the search space for the target, the built-in default config, and the valid grid
     (every combination keep() accepts, the default added);
  2. a persistent ConfigStudy (Optuna TPE, or the exhaustive grid) hands out batches of
     untried configs; each batch is compiled together (Timer.prepare: worker processes
     on a GPU), then each config, one at a time, is checked against the float64
     reference and timed. Compile errors, out-of-resources, wrong answers and timeouts
     become failed trials with their reason. Every outcome is told to the study and
     written to the tuning database as soon as it exists, so an interrupted run loses
     nothing that finished;
  3. when `trials` distinct configs are evaluated (or the grid is exhausted) the best
     `top_k`, the default and the database's current winner for this key are re-timed
     side by side, round-robin for `rounds` rounds; the lowest median wins and is stored
     with its speed-up over the default measured in the same rounds, and declared in the
     study (a later finish of the same trials stores it without timing again).

Shared (several processes on one study, mhfgen.tuning.workers): search() only evaluates,
counting configs other processes are evaluating as done and waiting for them at the end;
finish() writes every trial of the study to the database (skipping those stored already)
and then the winner. Tuner.tune() is search() then finish() for every kernel.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths, registry
from ..codegen import code_hash, template_hash
from ..registry import default_config
from ..version import __version__
from .db import TrialRecord, TuningDB, TuningKey, WinnerRecord, utc_now
from .hang import DEFAULT_HANG_S, HangGuard
from .outcome import Candidate, Failure
from .problem import DeviceFacts, TuningProblem, tflops
from .space import load_space
from .study import HOST, Asked, ConfigStudy, study_name
from .timer import CandidateFailed, DeviceLost, Timer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    """How hard to search.

    trials: distinct configs evaluated per kernel, the default included (all of the grid
    when it is smaller); batch: configs asked and compiled together; strategy: 'optuna'
    or 'grid'; startup: uniform random configs before TPE proposes (None: trials // 4,
    at least 4); refine: the last trials, spent on the untried configs nearest the best
    (None: trials // 4); top_k and rounds: the side-by-side re-timing; fresh: discard a
    stored study of the same problem instead of resuming it; hang_s: seconds a
    candidate's check and timing on a GPU may take before it is recorded as hung and the
    process ends (mhfgen.tuning.hang; None: no guard).
    """

    trials: int = 40
    batch: int = 8
    strategy: str = "optuna"
    seed: int = 0
    startup: int | None = None
    refine: int | None = None
    top_k: int = 3
    rounds: int = 3
    fresh: bool = False
    hang_s: float | None = DEFAULT_HANG_S

    def startup_trials(self) -> int:
        return self.startup if self.startup is not None else max(4, self.trials // 4)

    def refine_trials(self) -> int:
        """Trials of the local refinement (none for the grid strategy)."""
        if self.strategy == "grid":
            return 0
        return self.refine if self.refine is not None else self.trials // 4


@dataclass(frozen=True)
class Progress:
    """One step of a tuning run, for progress bars: `done` of `budget` configs of
    `kernel` evaluated; `phase` 'search' or 'retime'; `last` describes the latest one."""

    kernel: str
    phase: str
    done: int
    budget: int
    best_ms: float | None
    last: str = ""


@dataclass
class KernelResult:
    """The outcome of tuning one kernel (times in ms from the side-by-side rounds)."""

    kernel: str  # the variant's stem
    default: object  # the variant's config type, as winner and side_by_side's
    winner: object | None = None
    ms: float | None = None
    tflops: float | None = None
    default_ms: float | None = None
    speedup: float | None = None
    evaluated: int = 0
    resumed: int = 0
    grid_size: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    side_by_side: list[tuple[object, float]] = field(default_factory=list)
    timer_label: str | None = None  # what measured the side-by-side times

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def variant(self) -> str | None:
        """The winner's variant stem (None when nothing passed)."""
        return None if self.winner is None else self.winner.variant


def describe_config(config) -> str:
    """A compact form (the config's describe(): 'BM128 BN64 w8 s3' plus the fields away
    from their neutral value for the Triton-language variants)."""
    return config.describe()


def tuning_units(names: Iterable[str], spec, tokens: int) -> list[str]:
    """What to tune for `names` (ops or variant stems), one study each: a variant stem
    alone; for an op, its one usable variant's stem, or the op itself when several of
    its variants can run the problem (one joint study picks variant and config
    together; registry.usable: a variant that needs a GPU is left out on the
    interpreter). Ops no variant can run are left out."""
    out: list[str] = []
    for name in names:
        if name in registry.OPS:
            stems = [v.stem for v in registry.usable(name, spec, tokens)]
            unit = stems[0] if len(stems) == 1 else (name if stems else None)
        else:
            unit = name
        if unit is not None and unit not in out:
            out.append(unit)
    return out


#: what each code of describe_config means (printed by `mhfgen list` and `mhfgen show`)
CONFIG_LEGEND = (
    ("BM", "block_m: rows per program (a row is one token and query head)"),
    ("BN", "block_n: intermediate columns per tile"),
    ("w", "num_warps"),
    ("s", "num_stages (software-pipelining depth)"),
    ("gh", "group_heads: query heads of a kv-head group sharing each K/U/V tile load"),
    (
        "pad",
        "head_dim_split=pad: head_dim padded to a power of two (default: cut into "
        "power-of-two chunks)",
    ),
    ("is", "inter_splits: forward programs splitting the intermediate dimension (decode)"),
    ("ts", "token_splits: dK/dU/dV programs splitting the tokens (fp32 atomics)"),
    ("ru", "reduce_unroll: partial sums whose loads the forward's split reduction issues together"),
    (
        "xchg",
        "store_reset off: the split reduction's ticket reset by an atomic exchange (old configs)",
    ),
    (
        "tma",
        "tiles loaded through tensor descriptors (TMA, sm90+): K/U/V in the forward "
        "and dQ kernels; q/dO, with dq's TMA reduce-adds, in the one-pass backward",
    ),
    ("ws", "warp_specialize: Triton's automatic warp specialisation of the loop (sm90+)"),
    ("T", "transpose_acc: dK/dU/dV accumulate dK^T, head_dim as the MMA's M dimension"),
    (
        "prefetch",
        "prefetch_scores: the next tile's score MMAs issued before this tile's activation",
    ),
    (
        "split",
        "split_grads: dK/dU/dV as two kernels (dK and dU; dV); in the FP8 Gluon forward "
        "splitN: its weight tiles split over N programs (inter_splits, decode)",
    ),
    (
        "pdl",
        "programmatic dependent launch: the forward overlaps the previous kernel's end, "
        "prefetching its first K/U/V rows into L2 (sm90+; the Triton-language forward, "
        "and the FP8 Gluon forward's swapped decode)",
    ),
    ("hc", "head_chunk: kv heads per launch of the one-pass backward (its dq workspace)"),
    ("tanh", "sigmoid as 0.5 + 0.5 tanh.approx(x / 2): one MUFU op per element"),
    ("exp", "sigmoid through exp2 and a fast division (the Gluon kernels' other form)"),
    (
        "vec",
        "dq_vec: the Gluon one-pass kernels add dq by red.global.add.v4.f32, 4 values at once",
    ),
    ("dq-pending", "wait_dq off: the Gluon dQ/dR kernel's dq MMAs run on into the next tile"),
    (
        "early",
        "early_scores: the Gluon dQ/dR kernel issues the next tile's scores before dq's wait",
    ),
    (
        "rows",
        "split='rows': the Gluon dK/dU/dV warpgroups split a 64-token tile's weight rows "
        "(default 'tokens': they split a 128-token tile's tokens)",
    ),
    ("jgrads", "joint_grads: [dK^T | dU^T] accumulated by one wgmma chain (Gluon dK/dU/dV)"),
    ("wg", "wgN: wg_rows, the weight rows each consumer warpgroup owns end to end"),
    ("regs", "registers per thread of a Gluon kernel's partitions (setmaxnreg)"),
    ("x", "CxWw: a Gluon forward's consumer warpgroups (C) and warps per consumer (W)"),
    ("pingpong", "two Gluon consumers take turns issuing their GEMMs"),
    ("joint", "joint_scores: S and G by one wgmma of twice the width (Gluon kernels)"),
    ("2-tile", "unroll_tiles: two weight tiles per loop iteration (Gluon forwards)"),
    ("p-regs", "the FP8 forward's activation tile as a register operand of O's wgmma"),
    (
        "staged",
        "staged_scales: the FP8 forward's column factors by TMA with each weight tile, "
        "its routing weights staged in shared memory",
    ),
    (
        "swap",
        "swapN: swap_ab, the FP8 forward's swapped-operand decode schedule, N tokens per "
        "program as the wgmma's N",
    ),
    (
        "pbuf",
        "pbufN: p_buffers, the FP8 forward's activation tiles in shared memory per consumer; "
        "with 2 O's product is issued before the wait for the next tile's scores",
    ),
    (
        "runmax",
        "act_scale='running': the FP8 forward scales its activations to e4m3 by a running "
        "row maximum (default: a power-of-two bound fixed before the loop)",
    ),
)


def config_legend(indent: str = "  ") -> str:
    """CONFIG_LEGEND as text lines."""
    width = max(len(code) for code, _ in CONFIG_LEGEND)
    return "\n".join(f"{indent}{code:<{width}}  {text}" for code, text in CONFIG_LEGEND)


def study_storage_url(problem: TuningProblem, device: DeviceFacts) -> str:
    """sqlite:/// URL of the study file of one problem on one GPU, under the cache dir
    (open it with `optuna-dashboard <url>`)."""
    folder = paths.private_cache_subdir("studies")  # 0700; refused if others may write it
    name = f"{device.slug()}-{problem.spec.key()}-T{problem.tokens}.sqlite"
    return f"sqlite:///{(folder / name).resolve()}"


class Tuner:
    """Tunes the kernels of one problem through `timer`, storing into `db` (optional)."""

    def __init__(
        self,
        problem: TuningProblem,
        device: DeviceFacts,
        timer: Timer,
        db: TuningDB | None,
        settings: SearchSettings = SearchSettings(),
        storage_url: str | None = None,
        progress: Callable[[Progress], None] | None = None,
        shared: bool = False,
        worker: int = 0,
        poll_s: float = 0.5,
        baselines: Iterable[str | Path] = (),
    ) -> None:
        import torch
        import triton

        if problem.spec.target != device.target:
            raise ValueError(
                f"the problem's spec is for {problem.spec.target}, the device is {device.target}"
            )
        self.problem, self.device, self.timer, self.db = problem, device, timer, db
        self.settings, self.storage_url = settings, storage_url
        self.shared, self.worker, self.poll_s = shared, worker, poll_s
        self.baselines = [Path(b) for b in baselines]
        self.progress = progress or (lambda p: None)
        self.triton_version, self.torch_version = triton.__version__, torch.__version__
        self._stored = 0  # trials this process stored (see PAUSE_ENV)

    # -- planning ----------------------------------------------------------------
    # `kernel` below is a variant stem, or an op: then the op's variants that can run the
    # problem are searched together (tuning_units), the default is the preferred one's,
    # and every trial and winner is stored under its own variant's key.
    def variants(self, kernel: str) -> list[str]:
        """The variant stems `kernel` (a stem or an op) searches: for an op, those that
        can run the problem by their rank for its spec (registry.usable; the first one's
        default is a study's first trial)."""
        if kernel in registry.OPS:
            return [v.stem for v in registry.usable(kernel, self.problem.spec, self.problem.tokens)]
        return [kernel]

    def default(self, kernel: str):
        return default_config(
            self.variants(kernel)[0], self.problem.spec, self.problem.tokens, self.device.sm_count
        )

    def grid(self, kernel: str) -> list:
        """Every valid config of `kernel` for this problem (the default included when
        keep() accepts it); for an op, every valid config of each of its variants."""
        out = []
        for stem in self.variants(kernel):
            space = load_space(stem, self.problem.spec.target)
            extra = [
                default_config(stem, self.problem.spec, self.problem.tokens, self.device.sm_count)
            ]
            out += space.candidates(
                self.problem.spec, self.problem.tokens, self.device.sm_count, extra=extra
            )
        return out

    def budget(self, kernel: str) -> int:
        return min(self.settings.trials, len(self.grid(kernel)))

    def key(self, kernel: str) -> TuningKey:
        """The database key of variant `kernel` for this problem."""
        p = self.problem
        return TuningKey.of(
            kernel,
            template_hash(kernel),
            p.spec,
            p.bucket,
            p.tokens,
            self.device.gpu_name,
            self.device.compute_capability,
            self.triton_version,
        )

    def _template_hash(self, kernel: str) -> str:
        return "+".join(template_hash(stem) for stem in self.variants(kernel))

    def open_study(self, kernel: str) -> ConfigStudy:
        default = self.default(kernel)
        name = study_name(
            kernel,
            self._template_hash(kernel),
            f"{self.problem.spec.key()}-T{self.problem.tokens}",
            f"{self.device.gpu_name}|{self.device.compute_capability}",
            self.triton_version,
            self.settings.strategy,
        )
        s = self.settings
        return ConfigStudy(
            name,
            self.storage_url,
            self.grid(kernel),
            first=[default],
            strategy=s.strategy,
            seed=s.seed,
            startup=s.startup_trials(),
            fresh=s.fresh,
            shared=self.shared,
            worker=self.worker,
        )

    # -- running -----------------------------------------------------------------
    def tune(
        self, kernels: Iterable[str] | None = None, studies: dict[str, ConfigStudy] | None = None
    ) -> list[KernelResult]:
        """Search `kernels` (tuning units: variant stems, or ops for a joint study of their
        variants; None: every op, see tuning_units), then re-time and store each (finish)."""
        kernels = (
            list(kernels)
            if kernels is not None
            else tuning_units(registry.default_ops(), self.problem.spec, self.problem.tokens)
        )
        studies = studies or {k: self.open_study(k) for k in kernels}
        self.search(kernels, studies)
        return [self.finish(k, studies[k]) for k in kernels]

    def search(self, kernels: Iterable[str], studies: dict[str, ConfigStudy]) -> None:
        """Evaluate configs of `kernels` until each budget is spent. The first batch of
        every kernel is asked and compiled together up front: one larger, better balanced
        compile wave instead of one per kernel. Then kernel by kernel; in a shared study
        a kernel whose last configs other processes are evaluating is left for later and
        revisited (polling) until they are told."""
        kernels = list(kernels)
        waiting: dict[str, list[Asked]] = {}  # asked, not yet handed to search_kernel
        unfinished = []
        try:
            for k in kernels:
                waiting[k] = self._ask_next(studies[k])[0]
            prepared = iter(
                self.timer.prepare(
                    [Candidate(a.config.variant, a.config) for k in kernels for a in waiting[k]]
                )
            )
            first = {k: [next(prepared) for _ in waiting[k]] for k in kernels}
            for k in kernels:
                if not self.search_kernel(k, studies[k], (waiting.pop(k), first[k])):
                    unfinished.append(k)
        except BaseException:
            for k, asked in waiting.items():
                studies[k].abandon(asked)
            raise
        while unfinished:
            time.sleep(self.poll_s)
            unfinished = [k for k in unfinished if not self.search_kernel(k, studies[k])]

    def budget_of(self, study: ConfigStudy) -> int:
        return min(self.settings.trials, len(study.grid))

    def _ask_next(self, study: ConfigStudy) -> tuple[list[Asked], str]:
        """The next batch of up to `batch` configs, and the state: 'asked', 'complete'
        (the budget is spent, or the grid) or 'blocked' (other processes are evaluating
        the rest). TPE's (or the grid's) configs until the last `refine` trials of the
        budget, then the refinement around the best. When the remaining TPE trials leave
        room in a batch, refinement fills it (one compile wave fewer). Configs other
        processes are evaluating count as done here."""
        budget = self.budget_of(study)
        refine_from = budget - self.settings.refine_trials()
        study.refresh()
        evaluated = study.evaluated_count()
        if evaluated >= budget:
            return [], "complete"
        done = evaluated + study.in_flight()
        if done >= budget:
            return [], "blocked"
        batch = self.settings.batch
        if done >= refine_from:
            asked = study.ask_batch(min(batch, budget - done), refine=True, limit=budget)
        else:
            asked = study.ask_batch(min(batch, refine_from - done), limit=budget)
            room = min(batch - len(asked), budget - refine_from)
            if done > 0 and room > 0 and done + len(asked) >= refine_from:
                asked += study.ask_batch(room, refine=True, pending=asked, limit=budget)
        if asked:
            return asked, "asked"
        # nothing to ask: unshared, the grid (or the repair) is exhausted; shared, the
        # rest is claimed by others or the last claims collided: look again later,
        # unless nothing is untried and nothing is being evaluated
        if study.shared and (study.in_flight() or study.untried(set(study.claimed()))):
            return [], "blocked"
        return [], "complete"

    def search_kernel(
        self,
        kernel: str,
        study: ConfigStudy,
        first: tuple[list[Asked], list[Failure | None]] | None = None,
    ) -> bool:
        """Ask and evaluate batches of `kernel` until its budget is spent (True) or, in a
        shared study, the rest is being evaluated by other processes (False: call again
        later). `first`: a batch already asked and prepared (see search)."""
        budget = self.budget_of(study)
        self._report(kernel, "search", study, budget)
        while True:
            if first is not None:
                (asked, prepared), first = first, None
                if not asked:
                    continue
            else:
                asked, state = self._ask_next(study)
                prepared = None
                if not asked:
                    return state == "complete"
            try:
                self._evaluate_batch(kernel, study, asked, budget, prepared)
            except BaseException:
                study.abandon(asked)
                raise

    def tune_kernel(
        self,
        kernel: str,
        study: ConfigStudy | None = None,
        first: tuple[list[Asked], list[Failure | None]] | None = None,
    ) -> KernelResult:
        """Search, re-time and store `kernel` (in `study` if given, else open_study's).
        `first`: a batch already asked and prepared (see search)."""
        study = study or self.open_study(kernel)
        while not self.search_kernel(kernel, study, first):
            first = None
            time.sleep(self.poll_s)
        return self.finish(kernel, study)

    def finish(self, kernel: str, study: ConfigStudy) -> KernelResult:
        """After the search: every evaluated trial of the study (all processes') into the
        database, once; then the winner, re-timed side by side here unless another
        process already declared it for the same trials (then that one is stored, so
        every host stores the same winner)."""
        study.refresh()
        result = KernelResult(
            kernel, self.default(kernel), grid_size=len(study.grid), resumed=study.resumed
        )
        result.evaluated = study.evaluated_count()
        for outcome in study.outcomes.values():
            if isinstance(outcome, Failure):
                result.failures[outcome.stage] = result.failures.get(outcome.stage, 0) + 1
        self._sync_trials(kernel, study)
        declared = study.declared(result.evaluated)
        if declared is not None and self._stored_winner_agrees(kernel, declared, study):
            self._adopt(kernel, declared, result, study)
        else:
            self._retime(kernel, study, result, self.budget_of(study))
            if result.winner is not None:
                again = study.declared(result.evaluated)  # declared meanwhile elsewhere?
                if again is not None:
                    self._adopt(kernel, again, result, study)
                else:
                    study.declare(self._declaration(result, study))
        if result.winner is not None:
            self._store_winner(
                kernel, result, result.timer_label or self.timer.label_for(result.variant)
            )
        study.close()
        return result

    def _declaration(self, r: KernelResult, study: ConfigStudy) -> dict:
        """What finish() declares in the study; configs named as the study names them
        (study.key_of: their JSON, in a joint study with the variant)."""
        return {
            "evaluated": r.evaluated,
            "config": study.key_of(r.winner),
            "ms": r.ms,
            "tflops": r.tflops,
            "default_ms": r.default_ms,
            "speedup": r.speedup,
            "timer": self.timer.label_for(r.variant),
            "side_by_side": [[study.key_of(c), ms] for c, ms in r.side_by_side],
            "by": f"{HOST}:{os.getpid()}",
            "created": utc_now(),
        }

    def _adopt(self, kernel: str, declared: dict, r: KernelResult, study: ConfigStudy) -> None:
        log.info("%s: storing the winner declared by %s", kernel, declared.get("by"))
        r.winner = study.config_of(declared["config"])
        r.ms, r.tflops = declared["ms"], declared["tflops"]
        r.default_ms, r.speedup = declared["default_ms"], declared["speedup"]
        r.side_by_side = [(study.config_of(c), ms) for c, ms in declared["side_by_side"]]
        r.timer_label = declared.get("timer")

    def _stored_winner_agrees(self, kernel: str, declared: dict, study: ConfigStudy) -> bool:
        """Whether the database has no winner for this key, or the declared one (a
        different stored winner must be re-timed against it instead)."""
        if self.db is None:
            return True
        stored = self._stored_winners(kernel)
        return all(study.key_of(w.config) == declared["config"] for w in stored)

    def _stored_winners(self, kernel: str) -> list:
        """The database's winners of this problem for `kernel`'s variants."""
        return self._current_winners(self.db, kernel)

    def _current_winners(self, db: TuningDB, kernel: str) -> list:
        """`db`'s winners of this problem for `kernel`'s variants that still run the code
        they were tuned with (lookup.still_current: this template hash, or an older one
        whose change left the config's generated code as it was)."""
        from .lookup import still_current

        out = []
        for stem in self.variants(kernel):
            fields = self.key(stem).as_dict()
            del fields["template_hash"]
            out += [
                w for w in db.winners(**fields) if still_current(w, {stem: template_hash(stem)})
            ]
        return out

    def _baseline_winners(self, kernel: str) -> list:
        """The winners of this problem (exact key) in the `baselines` databases (the CLI
        passes the shipped one): re-timed beside the finalists, so a winner stored in a
        user database is never one that the winner it shadows beats on this GPU."""
        out = []
        target = Path(self.db.path).resolve() if self.db is not None else None
        for path in self.baselines:
            if not path.exists() or path.resolve() == target:
                continue
            try:
                with TuningDB.open(path, readonly=True) as db:
                    out += self._current_winners(db, kernel)
            except Exception as exc:  # noqa: BLE001 - a baseline is a courtesy, not a need
                log.warning("%s: cannot read the baseline database %s (%s)", kernel, path, exc)
        return out

    def _sync_trials(self, kernel: str, study: ConfigStudy) -> None:
        if self.db is None:
            return
        self.db.add_trials(
            [
                self._trial_record(
                    kernel,
                    e.config,
                    e.ms,
                    e.error,
                    e.failure,
                    study.name,
                    e.number,
                    e.timer,
                    e.finished,
                )
                for e in study.evaluated_trials()
            ],
            once=True,
        )

    @staticmethod
    def _evaluated(study: ConfigStudy) -> int:
        return study.evaluated_count()

    def report(self, kernel: str, study: ConfigStudy) -> None:
        """Report the search progress of `kernel` as `study` holds it now."""
        self._report(kernel, "search", study, self.budget_of(study))

    def _report(
        self, kernel: str, phase: str, study: ConfigStudy, budget: int, last: str = ""
    ) -> None:
        timed = study.timed()
        self.progress(
            Progress(
                kernel,
                phase,
                self._evaluated(study),
                budget,
                min(timed.values()) if timed else None,
                last,
            )
        )

    def _evaluate_batch(
        self,
        kernel: str,
        study: ConfigStudy,
        asked: list[Asked],
        budget: int,
        prepared: list[Failure | None] | None = None,
    ) -> None:
        candidates = [Candidate(a.config.variant, a.config) for a in asked]
        if prepared is None:
            prepared = self.timer.prepare(candidates)
        for a, c, failure in zip(asked, candidates, prepared):
            error, ms, lost = None, None, None
            with self._hang_guard(kernel, study, a, c):
                if failure is None:
                    error, failure = self.timer.check(c)
                if failure is None:
                    try:
                        ms = self.timer.time(c)
                    except DeviceLost as exc:
                        failure, lost = exc.failure, exc
                    except CandidateFailed as exc:
                        failure = exc.failure
            if failure is None:
                study.tell_time(a, ms, error, self.timer.label_for(c.kernel))
                last = f"{describe_config(c.config)}: {ms:.4g} ms"
            else:
                study.tell_failure(a, failure, error, self.timer.label_for(c.kernel))
                last = f"{describe_config(c.config)}: {failure}"
            record = self._trial_record(kernel, c.config, ms, error, failure, study.name, a.number)
            self._store_trial(record)
            self._report(kernel, "search", study, budget, last)
            if lost is not None:
                raise lost  # the trial is stored; this process can time nothing more

    def _hang_guard(
        self, kernel: str, study: ConfigStudy, asked: Asked, candidate: Candidate
    ) -> HangGuard:
        """The watchdog of one candidate's check and timing on a GPU: if they hang, the
        candidate is told to the study and stored as failed with stage 'hang' (from the
        watchdog's thread: this one is stuck in the GPU) and the process ends."""

        def record(failure: Failure) -> None:
            study.tell_failure(asked, failure, None, self.timer.label_for(candidate.kernel))
            self._store_trial(
                self._trial_record(
                    kernel, candidate.config, None, None, failure, study.name, asked.number
                )
            )

        seconds = self.settings.hang_s if self.timer.gpu_timings else None
        return HangGuard(seconds, describe_config(candidate.config), record, self._exit)

    #: how a hung candidate ends the process (tests replace it)
    _exit = staticmethod(os._exit)

    def _trial_record(
        self,
        kernel: str,
        config,
        ms: float | None,
        error: float | None,
        failure: Failure | None,
        study: str,
        number: int | None,
        timer: str | None = None,
        created: str = "",
    ) -> TrialRecord:
        """The record of one trial; `timer`: the label of the timer that measured it
        (None: this tuner's timer for the config's variant)."""
        stem = config.variant  # under its own variant's key, also in a joint study
        return TrialRecord(
            self.key(stem),
            config,
            "failed" if failure else "ok",
            ms=ms,
            tflops=tflops(self.problem.flops(stem), ms) if ms else None,
            error=error,
            stage=failure.stage if failure else None,
            reason=failure.reason if failure else None,
            timer=timer or self.timer.label_for(stem),
            study=study,
            trial_number=number,
            mhfgen_version=__version__,
            torch_version=self.torch_version,
            created=created or utc_now(),
        )

    def _store_trial(self, record: TrialRecord) -> None:
        """One trial into the database as soon as it is measured (once: finish() adds
        the trials of other processes under the same identity and skips this one)."""
        if self.db is None:
            return
        self.db.add_trial(record, once=True)
        self._stored += 1
        if self._stored == _pause_after():
            _pause(self._stored)

    # -- the final side-by-side timing --------------------------------------------
    def _baseline_ok(self, kernel: str, config, study: ConfigStudy) -> bool:
        """Whether `config` (outside the study's timed set) compiles and is correct."""
        outcome = study.outcomes.get(study.key_of(config))
        if outcome is not None:
            return isinstance(outcome, float)
        c = Candidate(config.variant, config)
        failure = self.timer.prepare([c])[0]
        if failure is None:
            _, failure = self.timer.check(c)
        if failure is not None:
            log.warning(
                "%s: %s fails (%s); it is left out of the final timing",
                kernel,
                describe_config(config),
                failure,
            )
        return failure is None

    def _retime(self, kernel: str, study: ConfigStudy, result: KernelResult, budget: int) -> None:
        timed = study.timed()
        ranked = sorted(timed, key=timed.get)[: self.settings.top_k]
        finalists = [study.config_of(k) for k in ranked]
        extras = [result.default]
        if self.db is not None:
            extras += [w.config for w in self._stored_winners(kernel)]
        extras += [w.config for w in self._baseline_winners(kernel)]
        for config in extras:
            if config not in finalists and self._baseline_ok(kernel, config, study):
                finalists.append(config)
        if not finalists:
            log.warning("%s: no config passed; nothing is stored", kernel)
            return
        self._report(kernel, "retime", study, budget, f"{len(finalists)} configs side by side")
        samples: dict[object, list[float]] = {c: [] for c in finalists}
        for r in range(max(1, self.settings.rounds)):
            order = finalists[r % len(finalists) :] + finalists[: r % len(finalists)]
            for config in order:
                if config not in samples:
                    continue
                try:
                    samples[config].append(self.timer.time(Candidate(config.variant, config)))
                except DeviceLost:
                    raise
                except CandidateFailed as exc:
                    log.warning(
                        "%s: %s failed when re-timed (%s)",
                        kernel,
                        describe_config(config),
                        exc.failure,
                    )
                    del samples[config]
        medians = {c: statistics.median(v) for c, v in samples.items() if v}
        if not medians:
            return
        result.side_by_side = sorted(medians.items(), key=lambda kv: kv[1])
        winner, ms = result.side_by_side[0]
        result.winner, result.ms = winner, ms
        result.tflops = tflops(self.problem.flops(winner.variant), ms)
        result.default_ms = medians.get(result.default)
        result.speedup = result.default_ms / ms if result.default_ms else None

    def _store_winner(self, kernel: str, r: KernelResult, timer: str) -> None:
        """The winner under its variant's key; in a joint study the stored winners of the
        op's other variants for this problem are removed (they were re-timed beside it
        and lost), so dispatch finds one winner per problem."""
        if self.db is None:
            return
        stem = r.winner.variant
        self.db.put_winner(
            WinnerRecord(
                self.key(stem),
                r.winner,
                r.ms,
                r.tflops,
                r.default_ms,
                r.speedup,
                timer,
                r.evaluated,
                __version__,
                self.torch_version,
                utc_now(),
                code_hash(stem, self.problem.spec, r.winner),
            ),
            policy="replace",
        )
        for other in self.variants(kernel):
            if other != stem:
                self.db.remove_winner(self.key(other))


#: a testing hook: MHFGEN_TEST_PAUSE_AFTER_TRIALS=N makes a tuner stop after storing its
#: N-th trial, say so on stderr and wait there until it is signalled, so that a test can
#: interrupt it at a known point instead of racing a timer
PAUSE_ENV = "MHFGEN_TEST_PAUSE_AFTER_TRIALS"


def _pause_after() -> int | None:
    value = os.environ.get(PAUSE_ENV, "")
    return int(value) if value.isdigit() else None


def _pause(stored: int) -> None:
    print(f"mhfgen tune: paused after {stored} trials ({PAUSE_ENV})", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)  # a signal (SIGTERM, Ctrl-C) ends it, through its handler


def storage_path(url: str) -> Path:
    """The file of a sqlite:/// storage URL."""
    return Path(url.removeprefix("sqlite:///"))
