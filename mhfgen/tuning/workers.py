"""Tuning one problem with several worker processes that share one Optuna study.

`mhfgen tune --workers N [--storage URL]` runs a coordinator (the command's process) and
N workers:

  coordinator  1. opens each kernel's study in the storage (creates it, applies --fresh);
               2. starts the workers, `python -m mhfgen.tuning.workers JOB.json`, worker
                  i with CUDA_VISIBLE_DEVICES set to the i-th visible GPU (on a GPU
                  machine; on the CPU they are N processes);
               3. shows their progress (read from the study) and waits for them;
               4. evaluates what is left itself (a worker that died leaves configs
                  untried; its RUNNING trials are failed, see mhfgen.tuning.study), then
                  finishes each kernel: every trial of the study into the tuning database
                  once, and the winner, chosen from all workers' trials and re-timed side
                  by side on the coordinator's GPU (the first visible one).
  worker i     Tuner(shared=True, worker=i).search(): asks batches from the shared study
               (what other workers evaluated or are evaluating is never asked again),
               compiles them in its own compile pool, checks and times them on its GPU,
               tells the study and writes each trial to the database as it is measured.

Workers on other hosts are other `mhfgen tune --storage URL` commands with the same
problem: each host's coordinator finishes when the study is complete, and the first to
re-time the winner declares it in the study, so every host stores the same winner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: how the workers measure: 'gpu' (GpuTimer), 'interpreter' (InterpreterTimer) or
#: 'replay' (ReplayTimer of the file in WorkerJob.replay)
TIMER_KINDS = ("gpu", "interpreter", "replay")


@dataclass
class WorkerJob:
    """Everything one worker process needs, as JSON (see run_worker)."""

    index: int
    spec: dict
    tokens: int
    device: dict
    settings: dict
    storage: str
    kernels: list[str]
    timer: str
    seed: int = 0
    jobs: int = 1
    replay: str | None = None
    db: str | None = None
    record: str | None = None
    verbose: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WorkerJob:
        return cls(**json.loads(Path(path).read_text()))


def build_timer(kind: str, problem, seed: int = 0, jobs: int = 1, replay: str | None = None):
    """The Timer of `kind` (TIMER_KINDS) for `problem` on this process's device."""
    from .workload import Workload

    if kind == "replay":
        from .timer import ReplayTimer

        return ReplayTimer(replay)
    if kind == "gpu":
        from .timer import GpuTimer

        return GpuTimer(Workload(problem, "cuda", seed=seed), jobs=jobs)
    if kind == "interpreter":
        from .timer import InterpreterTimer

        return InterpreterTimer(Workload(problem, "cpu", seed=seed))
    raise ValueError(f"timer kind must be one of {TIMER_KINDS}, got {kind!r}")


def command_tuner(problem, device, timer, db, settings, storage, shared: bool, worker: int = 0):
    """The Tuner of `mhfgen tune`, in its own process or as worker `worker`: the study at
    `storage` (shared with other processes or hosts where `shared`), the shipped
    database's winners as baselines."""
    from .. import paths
    from .search import Tuner

    baselines = [paths.shipped_db_path()]
    return Tuner(
        problem,
        device,
        timer,
        db,
        settings,
        storage,
        shared=shared,
        worker=worker,
        baselines=baselines,
    )


def run_worker(job: WorkerJob) -> int:
    """One worker: search the job's kernels in the shared study until every budget is
    spent. Returns the exit status (0: done)."""
    import mhfgen  # noqa: F401 - first: switches Triton's interpreter on without CUDA

    from ..spec import KernelSpec
    from .db import TuningDB
    from .problem import DeviceFacts, TuningProblem
    from .search import SearchSettings
    from .timer import RecordingTimer

    problem = TuningProblem(KernelSpec(**job.spec), job.tokens)
    device = DeviceFacts(**job.device)
    if job.timer == "gpu":
        import torch

        here = DeviceFacts.of(torch.device("cuda"))
        if (here.gpu_name, here.compute_capability) != (device.gpu_name, device.compute_capability):
            print(
                f"worker {job.index}: this GPU is {here.gpu_name} ({here.compute_capability}),"
                f" the study tunes {device.gpu_name} ({device.compute_capability})",
                file=sys.stderr,
            )
            return 2
    timer = build_timer(job.timer, problem, job.seed, job.jobs, job.replay)
    if job.record:
        timer = RecordingTimer(timer, device)
    db = TuningDB.open(job.db) if job.db else None
    settings = SearchSettings(**{**job.settings, "fresh": False})
    tuner = command_tuner(problem, device, timer, db, settings, job.storage, True, job.index)
    studies = {}
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        studies = {k: tuner.open_study(k) for k in job.kernels}
        tuner.search(job.kernels, studies)
    except KeyboardInterrupt:
        print(f"worker {job.index}: stopped; its open trials will be retried", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for study in studies.values():
            study.close()
        if job.record:
            timer.save(job.record)
        timer.close()
        if db is not None:
            db.close()
    return 0


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


# -- the coordinator's side -----------------------------------------------------------
def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class Worker:
    """A started worker process."""

    job: WorkerJob
    proc: subprocess.Popen
    log_path: Path
    gpu: str | None = None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class WorkerPool:
    """N worker processes of one tuning run (see the module doc)."""

    jobs: list[WorkerJob]
    folder: Path
    gpus: list[str] | None = None
    workers: list[Worker] = field(default_factory=list)

    def start(self) -> None:
        import mhfgen

        root = str(Path(mhfgen.__file__).resolve().parents[1])
        for job in self.jobs:
            path = self.folder / f"worker{job.index}.json"
            job.save(path)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            gpu = None
            if self.gpus is not None:
                gpu = self.gpus[job.index]
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log_path = self.folder / f"worker{job.index}.log"
            with open(log_path, "w") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mhfgen.tuning.workers", str(path)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.workers.append(Worker(job, proc, log_path, gpu))

    def wait(self, poll: Callable[[], None] = lambda: None, poll_s: float = 1.0) -> list[Worker]:
        """Wait for every worker, calling `poll` every `poll_s`; returns those that failed."""
        while any(w.proc.poll() is None for w in self.workers):
            poll()
            time.sleep(poll_s)
        poll()
        return [w for w in self.workers if w.proc.returncode != 0]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every running worker (its open trials are failed, to be retried), then
        wait; kill those still running after `timeout_s`."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m mhfgen.tuning.workers JOB.json (started by mhfgen tune --workers)",
            file=sys.stderr,
        )
        return 2
    job = WorkerJob.load(args[0])
    logging.basicConfig(
        level=logging.DEBUG if job.verbose else logging.WARNING,
        format=f"worker {job.index} %(levelname)s %(name)s: %(message)s",
    )
    return run_worker(job)


if __name__ == "__main__":
    sys.exit(main())
