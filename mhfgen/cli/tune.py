"""`mhfgen tune`: search the launch parameters of the forward and backward kernels of one
problem on this machine, store every trial and the winners in the tuning database.

With no flags it does the README's main job: on a GPU, the 370M preset at 16384 tokens in
bfloat16; without one, a small fp32 problem through Triton's interpreter on the CPU (its
timings are interpreter wall-clock times, not GPU timings, and are stored for the
interpreter only). Interrupt it (Ctrl-C, kill) and run it again: it resumes.
"""
from __future__ import annotations

import os
import signal
import sys

from . import CommandError
from .common import add_problem_args, problem_from_args

#: the problem of a bare `mhfgen tune` on a machine without a GPU
CPU_PROBLEM = dict(heads=2, kv_heads=1, head_dim=32, intermediate=64, experts=2, tokens=32,
                   dtype="float32")
CPU_TRIALS = 8
GPU_PRESET, GPU_TOKENS, GPU_DTYPE, GPU_TRIALS = "370M", 16384, "bfloat16", 32
SHORT_NAMES = {"fwd": "flash_mhf_fwd", "dq": "flash_mhf_bwd_dq", "dkv": "flash_mhf_bwd_dkv"}
_PROBLEM_FLAGS = ("preset", "heads", "kv_heads", "head_dim", "intermediate", "experts", "tokens",
                  "dtype")


def register(sub) -> None:
    p = sub.add_parser(
        "tune", help="tune the kernels' launch parameters for one problem",
        description="Search the launch parameters of the forward and both backward kernels "
                    "for one problem on this machine (Optuna; candidates compiled in parallel, "
                    "checked against the float64 reference, timed one at a time; the best "
                    "re-timed side by side with the built-in default). Every trial and the "
                    "winners go to the tuning database. Resumable: run it again after an "
                    "interruption. With no problem flags: the 370M preset at 16384 tokens in "
                    "bfloat16 on a GPU, a small float32 problem through Triton's interpreter "
                    "without one.")
    add_problem_args(p)
    p.set_defaults(tokens=None, dtype=None)
    for action in p._actions:  # the defaults depend on the machine here
        if action.dest == "tokens":
            action.help = f"tokens B*L (default {GPU_TOKENS} on a GPU, {CPU_PROBLEM['tokens']} on the CPU)"
        elif action.dest == "dtype":
            action.help = f"default {GPU_DTYPE} on a GPU, float32 on the CPU"
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=None,
                   help=f"distinct configs evaluated per kernel, the default included "
                        f"(default {GPU_TRIALS} on a GPU, {CPU_TRIALS} on the CPU)")
    g.add_argument("--kernels", default="fwd,dq,dkv",
                   help="comma list of fwd, dq, dkv (default: all three)")
    g.add_argument("--strategy", choices=("optuna", "grid"), default="optuna",
                   help="optuna (TPE) or grid (every valid config; the exhaustive baseline)")
    g.add_argument("--batch", type=int, default=None,
                   help="configs asked and compiled together (default: CPU cores, at most 16)")
    g.add_argument("--jobs", type=int, default=None,
                   help="compile processes on a GPU (default: CPU cores)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampler and the inputs")
    g.add_argument("--fresh", action="store_true",
                   help="discard the stored study of this problem instead of resuming it")
    g.add_argument("--db", default=None, help="tuning database (default: $MHFGEN_DB or "
                                              "~/.cache/mhfgen/tuning.sqlite)")
    g.add_argument("--replay", default=None, metavar="FILE",
                   help="time nothing: replay timings recorded in FILE (mhfgen-timings JSON)")
    g.add_argument("--record", default=None, metavar="FILE",
                   help="also write every measured timing to FILE (replayable with --replay)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _kernels(text: str) -> list[str]:
    out = []
    for name in filter(None, (t.strip() for t in text.split(","))):
        full = SHORT_NAMES.get(name, name)
        if full not in SHORT_NAMES.values():
            raise CommandError(f"--kernels: unknown kernel {name!r}; use fwd, dq, dkv")
        out.append(full)
    if not out:
        raise CommandError("--kernels: name at least one kernel")
    return out


def _fill_defaults(args, on_gpu: bool) -> bool:
    """Fill the problem flags the user left out; True when none was given (main job)."""
    bare = all(getattr(args, name) is None for name in _PROBLEM_FLAGS)
    if on_gpu:
        if bare:
            args.preset = GPU_PRESET
        args.tokens = args.tokens or GPU_TOKENS
        args.dtype = args.dtype or GPU_DTYPE
        args.trials = args.trials or GPU_TRIALS
    else:
        if bare:
            for name, value in CPU_PROBLEM.items():
                setattr(args, name, value)
        args.tokens = args.tokens or CPU_PROBLEM["tokens"]
        args.dtype = args.dtype or "float32"
        args.trials = args.trials or CPU_TRIALS
    return bare


def _setup(args):
    """(problem, device facts, timer, storage URL) for the flags and this machine."""
    import torch

    from ..spec import KernelSpec
    from ..tuning.problem import DeviceFacts, TuningProblem
    from ..tuning.search import study_storage_url

    if args.replay:
        from ..tuning.timer import ReplayTimer

        try:
            timer = ReplayTimer(args.replay)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"--replay {args.replay}: {exc}") from exc
        device = timer.device
    elif torch.cuda.is_available():
        device = DeviceFacts.of(torch.device("cuda"))
        timer = None
    else:
        device = DeviceFacts.of(torch.device("cpu"))
        timer = None
    bare = _fill_defaults(args, device.is_gpu)
    p = problem_from_args(args)
    try:
        spec = KernelSpec(p["heads"], p["kv_heads"], p["head_dim"], p["experts"],
                          p["expert_dim"], args.dtype, device.target)
        problem = TuningProblem(spec, args.tokens)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if not device.is_gpu and args.dtype == "bfloat16" and not args.replay:
        raise CommandError("bfloat16 does not run in Triton's interpreter (no GPU here); "
                           "use --dtype float32 or float16")
    if timer is None:
        from ..tuning.workload import Workload

        if device.is_gpu:
            from ..tuning.timer import GpuTimer

            timer = GpuTimer(Workload(problem, "cuda", seed=args.seed),
                             jobs=args.jobs or os.cpu_count() or 1)
        else:
            from ..tuning.timer import InterpreterTimer

            timer = InterpreterTimer(Workload(problem, "cpu", seed=args.seed))
    storage = None if args.replay else study_storage_url(problem, device)
    return problem, device, timer, storage, bare


def _progress_bar(budgets: dict[str, int], disable: bool):
    """A tqdm bar over the configs of every kernel, and the Tuner's progress callback."""
    from tqdm import tqdm

    bar = tqdm(total=sum(budgets.values()), unit="config", file=sys.stderr,
               disable=True if disable else None, dynamic_ncols=True)
    names = list(budgets)
    base = {k: sum(budgets[n] for n in names[:i]) for i, k in enumerate(names)}

    def update(p) -> None:
        short = next((s for s, k in SHORT_NAMES.items() if k == p.kernel), p.kernel)
        bar.n = base[p.kernel] + p.done
        best = f"best {p.best_ms:.4g} ms" if p.best_ms is not None else "no time yet"
        phase = "re-timing the best side by side" if p.phase == "retime" else best
        bar.set_description(short)
        bar.set_postfix_str(phase, refresh=False)
        bar.refresh()

    return bar, update


def _summary(problem, device, timer, results, db_path, storage) -> str:
    from ..tuning.problem import tflops
    from ..tuning.search import describe_config

    lines = [f"Tuned {problem.describe()} on {device.gpu_name} ({device.target}, compute "
             f"capability {device.compute_capability})",
             f"timings: {timer.label}"]
    if not timer.gpu_timings:
        lines.append("NOTE: these are NOT GPU timings; they rank configs for Triton's "
                     "interpreter only. Run `mhfgen tune` on a GPU for real ones.")
    header = ("kernel", "best config", "ms", "TFLOP/s", "default ms", "speed-up", "trials (failed)")
    rows = []
    for r in results:
        rows.append((r.kernel, describe_config(r.winner) if r.winner else "none passed",
                     f"{r.ms:.4g}" if r.ms else "-", f"{r.tflops:.3g}" if r.tflops else "-",
                     f"{r.default_ms:.4g}" if r.default_ms else "-",
                     f"{r.speedup:.2f}x" if r.speedup else "-", f"{r.evaluated} ({r.failed})"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    if len(results) == 3 and all(r.ms for r in results):
        total = sum(r.ms for r in results)
        line = (f"forward + backward: {total:.4g} ms, "
                f"{tflops(problem.model_flops_fwd_bwd(), total):.3g} TFLOP/s (18*T*H*I*D)")
        if all(r.default_ms for r in results):
            line += f", {sum(r.default_ms for r in results) / total:.2f}x the built-in defaults"
        lines.append(line)
    lines.append(f"stored in {db_path}")
    if storage:
        lines.append(f"study: optuna-dashboard {storage}")
    return "\n".join(lines)


def run(args) -> int:
    from ..paths import user_db_path
    from ..tuning.db import TuningDB, TuningDBError
    from ..tuning.search import SearchSettings, Tuner
    from ..tuning.timer import RecordingTimer

    kernels = _kernels(args.kernels)
    if args.trials is not None and args.trials < 1:
        raise CommandError(f"--trials must be >= 1, got {args.trials}")
    problem, device, timer, storage, bare = _setup(args)
    db_path = args.db or str(user_db_path())
    try:
        db = TuningDB.open(db_path)
    except TuningDBError as exc:
        timer.close()
        raise CommandError(str(exc)) from exc
    if not device.is_gpu:
        where = "a small problem " if bare else ""
        print(f"No GPU here: tuning {where}through Triton's interpreter on the CPU. Its "
              f"timings are interpreter wall-clock times, NOT GPU timings.", file=sys.stderr)
    if args.record:
        timer = RecordingTimer(timer, device)
    batch = args.batch or min(16, os.cpu_count() or 1)
    settings = SearchSettings(trials=args.trials, batch=max(1, batch), strategy=args.strategy,
                              seed=args.seed, fresh=args.fresh)
    print(f"Tuning {', '.join(kernels)} for {problem.describe()} on {device.gpu_name}",
          file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _terminate)
    bar = None
    try:
        tuner = Tuner(problem, device, timer, db, settings, storage)
        studies = {k: tuner.open_study(k) for k in kernels}
        resumed = sum(s.resumed for s in studies.values())
        if resumed:
            print(f"Resuming: {resumed} configs already evaluated", file=sys.stderr)
        bar, tuner.progress = _progress_bar(
            {k: min(settings.trials, len(s.grid)) for k, s in studies.items()}, args.no_progress)
        results = tuner.tune(kernels, studies)
    except KeyboardInterrupt:
        print("\nInterrupted: finished trials are stored; run the same command again to "
              "resume.", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        signal.signal(signal.SIGTERM, previous)
        if args.record:
            timer.save(args.record)
        timer.close()
        db.close()
    print(_summary(problem, device, timer, results, db_path, storage))
    return 0 if all(r.winner for r in results) else 1


def _terminate(signum, frame) -> None:
    """SIGTERM: unwind like Ctrl-C, so open trials are marked and workers stopped."""
    raise KeyboardInterrupt
