"""`mhfgen tune`: search the launch parameters of the forward and backward kernels of one
problem on this machine, store every trial and the winners in the tuning database.

With no flags it does the README's main job: on a GPU, the 370M preset at 16384 tokens in
bfloat16; without one, a small fp32 problem through Triton's interpreter on the CPU (its
timings are interpreter wall-clock times, not GPU timings, and are stored for the
interpreter only). Interrupt it (Ctrl-C, kill) and run it again: it resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys

from ..tuning.hang import DEFAULT_HANG_S
from . import CommandError
from .common import add_command, add_problem_args, spec_from_args
from .output import table

#: the problem of a bare `mhfgen tune` on a machine without a GPU
CPU_PROBLEM = dict(
    heads=2, kv_heads=1, head_dim=32, intermediate=64, experts=2, tokens=32, dtype="float32"
)
CPU_TRIALS = 8
GPU_PRESET, GPU_TOKENS, GPU_DTYPE, GPU_TRIALS = "370M", 16384, "bfloat16", 32
_SIZE_FLAGS = ("preset", "heads", "kv_heads", "head_dim", "intermediate", "experts")
_PROBLEM_FLAGS = (*_SIZE_FLAGS, "tokens", "dtype")
#: the most tokens `mhfgen tune` takes (2**24): past it the tuning inputs and their float64
#: references of the smallest preset (H*D = 768) need over 300 GiB, more than any one GPU
#: or a usual host holds
MAX_TUNE_TOKENS = 2**24
#: the model FLOPs (18*T*H*I*D, forward + backward) above which `tune` without a GPU
#: refuses a problem: about 40 times the small CPU problem, whose default tune takes
#: seconds; a default tune at the bound takes minutes through Triton's interpreter
CPU_MAX_TUNE_FLOPS = 1e8


def register(sub) -> None:
    p = add_command(
        sub,
        "tune",
        run,
        help="tune the kernels' launch parameters for one problem",
        description="Search the launch parameters of the forward and both backward kernels "
        "for one problem on this machine (Optuna; candidates compiled in parallel, "
        "checked against the float64 reference, timed one at a time; the best "
        "re-timed side by side with the built-in default). Every trial and the "
        "winners go to the tuning database. Resumable: run it again after an "
        "interruption. With no problem flags: the 370M preset at 16384 tokens in "
        "bfloat16 on a GPU, a small float32 problem through Triton's interpreter "
        "without one.",
    )
    add_problem_args(p)
    p.set_defaults(tokens=None, dtype=None)
    for action in p._actions:  # the defaults depend on the machine here
        if action.dest == "tokens":
            action.help = (
                f"tokens B*L (default {GPU_TOKENS} on a GPU, {CPU_PROBLEM['tokens']} on the CPU)"
            )
        elif action.dest == "dtype":
            action.help = f"default {GPU_DTYPE} on a GPU, float32 on the CPU"
    g = p.add_argument_group("search")
    g.add_argument(
        "--trials",
        type=int,
        default=None,
        help=f"distinct configs evaluated per kernel, the default included "
        f"(default {GPU_TRIALS} on a GPU, {CPU_TRIALS} on the CPU)",
    )
    # NOTE: the default (registry.default_ops) is resolved when the command runs: the
    # registry imports torch, which building the parsers does not
    g.add_argument(
        "--kernels",
        default=None,
        help="comma list of fwd, dq, dkv, bwd (default fwd,dq,dkv: the forward "
        "and the split backward; bwd, the one-pass backward, is opt-in: "
        "dispatch runs it where its time beats dq + dkv's)",
    )
    g.add_argument(
        "--strategy",
        choices=("optuna", "grid"),
        default="optuna",
        help="optuna (TPE) or grid (every valid config; the exhaustive baseline)",
    )
    g.add_argument(
        "--batch",
        type=int,
        default=None,
        help="configs asked and compiled together (default: CPU cores, at most 16)",
    )
    g.add_argument(
        "--jobs", type=int, default=None, help="compile processes on a GPU (default: CPU cores)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the sampler and the inputs")
    g.add_argument(
        "--fresh",
        action="store_true",
        help="discard the stored study of this problem instead of resuming it",
    )
    g.add_argument(
        "--hang-timeout",
        type=float,
        default=DEFAULT_HANG_S,
        metavar="SECONDS",
        help="on a GPU, a candidate whose check and timing take longer is recorded as hung "
        "(never asked again) and the run ends; run the command again to resume (0: no "
        f"limit; default {DEFAULT_HANG_S:g})",
    )
    g.add_argument(
        "--db",
        default=None,
        help="tuning database (default: $MHFGEN_DB or tuning.sqlite in the cache folder)",
    )
    g.add_argument(
        "--replay",
        default=None,
        metavar="FILE",
        help="time nothing: replay timings recorded in FILE (mhfgen-timings JSON)",
    )
    g.add_argument(
        "--record",
        default=None,
        metavar="FILE",
        help="also write every measured timing to FILE (replayable with --replay)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = p.add_argument_group("recorded problems")
    r.add_argument(
        "--from-record",
        default=None,
        metavar="PATH",
        help="tune every problem recorded in PATH by a run with MHFGEN_RECORD=PATH "
        "(JSON lines) on this GPU, one after the other, instead of one problem "
        "from the flags; problems already tuned are skipped, so it resumes; "
        "--trials, --workers and the other search flags apply to each",
    )
    w = p.add_argument_group("several GPUs and hosts")
    w.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing one Optuna study: one per GPU (the first N "
        "visible ones), or N processes on the CPU; each config is evaluated "
        "once by one of them, and the winner is re-timed side by side on the "
        "first GPU (default 1: this process alone)",
    )
    w.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="the Optuna storage of the study, shared by the workers and by "
        "`mhfgen tune --storage URL` of the same problem on other hosts: "
        "postgresql://USER:PASSWORD@HOST/DB (needs mhfgen[postgres]), "
        "journal:FILE (a journal file; other hosts need the same file system), "
        "sqlite:///FILE (one host) (default: one SQLite file per problem "
        "under $MHFGEN_CACHE_DIR/studies)",
    )


def _kernels(text: str | None) -> list[str]:
    """The names of a --kernels list: ops (by short name fwd, dq, dkv, or bwd_dq, ...)
    or variant stems, in the order given (see mhfgen.tuning.search.tuning_units for what
    an op becomes); None: the ops a tune tunes by default (registry.default_ops)."""
    from .. import registry

    if text is None:
        text = ",".join(registry.OPS[op].short for op in registry.default_ops())

    out: list[str] = []
    for name in filter(None, (t.strip() for t in text.split(","))):
        try:
            full = name if name in registry.stems() else registry.op_named(name)
        except registry.RegistryError:
            shorts = ", ".join(op.short for op in registry.OPS.values())
            raise CommandError(
                f"--kernels: unknown kernel {name!r}; use {shorts} or a "
                f"variant ({', '.join(registry.stems())})"
            ) from None
        if full not in out:
            out.append(full)
    if not out:
        raise CommandError("--kernels: name at least one kernel")
    return out


def _short(stem: str) -> str:
    """The progress bar's name of a tuning unit: an op's short name for an op (a joint
    study of its variants) or a variant that is its op's only one, else the stem."""
    from .. import registry

    if stem in registry.OPS:
        return registry.OPS[stem].short
    variant = registry.get(stem)
    if len(registry.variants_for(variant.op)) == 1:
        return registry.OPS[variant.op].short
    return stem


def _fill_defaults(args, on_gpu: bool) -> bool:
    """Fill the problem flags the user left out; True when none was given (main job).
    Without a GPU, a problem of no size flag (--preset, --heads, ... only --tokens or
    --dtype given) is the small CPU problem at those tokens and that dtype: not the
    8-head, D=128 sizes of the flags' defaults, which the interpreter cannot tune."""
    bare = all(getattr(args, name) is None for name in _PROBLEM_FLAGS)
    if not on_gpu and all(getattr(args, name) is None for name in _SIZE_FLAGS):
        for name in _SIZE_FLAGS[1:]:
            setattr(args, name, CPU_PROBLEM[name])
    if on_gpu:
        if bare:
            args.preset = GPU_PRESET
        args.tokens = GPU_TOKENS if args.tokens is None else args.tokens
        args.dtype = args.dtype or GPU_DTYPE
        args.trials = GPU_TRIALS if args.trials is None else args.trials
    else:
        if bare:
            for name, value in CPU_PROBLEM.items():
                setattr(args, name, value)
        args.tokens = CPU_PROBLEM["tokens"] if args.tokens is None else args.tokens
        args.dtype = args.dtype or "float32"
        args.trials = CPU_TRIALS if args.trials is None else args.trials
    return bare


def _setup(args):
    """(problem, device facts, timer kind, replay timer or None, storage URL, bare) for
    the flags and this machine."""
    import torch

    from ..tuning.problem import DeviceFacts, TuningProblem
    from ..tuning.search import study_storage_url

    replay = None
    if args.replay:
        from ..tuning.timer import ReplayTimer

        try:
            replay = ReplayTimer(args.replay)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"--replay {args.replay}: {exc}") from exc
        device, kind = replay.device, "replay"
    elif torch.cuda.is_available():
        device, kind = DeviceFacts.of(torch.device("cuda")), "gpu"
    else:
        device, kind = DeviceFacts.of(torch.device("cpu")), "interpreter"
    bare = _fill_defaults(args, device.is_gpu)
    if args.tokens > MAX_TUNE_TOKENS:
        raise CommandError(
            f"--tokens {args.tokens} is more than mhfgen tune takes "
            f"({MAX_TUNE_TOKENS} = 2**24); larger calls use the winner tuned "
            f"nearest in tokens"
        )
    try:
        spec = spec_from_args(args, device.target)
        problem = TuningProblem(spec, args.tokens)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if not device.is_gpu and spec.activation_dtype == "bfloat16" and not args.replay:
        raise CommandError(
            f"{args.dtype} does not run in Triton's interpreter (no GPU here): it cannot "
            "multiply bfloat16; use --dtype float32 or float16 (float16_e4m3 for FP8 weights)"
        )
    if not args.replay:
        _check_fits(problem, device)
    storage = args.storage
    if storage is None and not args.replay:
        try:
            storage = study_storage_url(problem, device)
        except OSError as exc:
            raise CommandError(
                f"cannot create the study folder under the cache folder "
                f"({exc}); set MHFGEN_CACHE_DIR to a writable folder"
            ) from exc
    if args.storage is not None:
        _check_storage(args.storage)
    return problem, device, kind, replay, storage, bare


def workload_bytes(problem) -> int:
    """About the memory the tuning of `problem` holds (mhfgen.tuning.workload): per token
    and head, q, do, o and dq in the dtype, their float64 references (q, do, o, dq), the
    float32 q and do made on the host first, and r, dr with their float32 and float64
    forms; the weights are small beside them."""
    s = problem.spec
    per_row = s.head_dim * (4 * s.torch_dtype.itemsize + 4 * 8 + 2 * 4) + s.experts * (
        3 * 4 + 2 * 8
    )
    weights = 3 * s.kv_heads * s.experts * s.expert_dim * s.head_dim * (2 * 8 + 3 * 4)
    return problem.tokens * s.heads * per_row + weights


def _device_memory(device) -> int | None:
    """The memory of the device tuned on (a GPU's, else the host's), None if unknown."""
    import torch

    if device.is_gpu:
        try:
            return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        except Exception:  # noqa: BLE001 - unknown: no check
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(problem, device) -> None:
    """Refuse up front, in one line, a problem this machine cannot tune: without a GPU,
    more than CPU_MAX_TUNE_FLOPS (suggesting one that fits); anywhere, a workload larger
    than the device's memory."""
    from ..tuning.problem import MODEL_FWD_BWD_FACTOR

    if not device.is_gpu:
        flops = problem.model_flops_fwd_bwd()
        if flops > CPU_MAX_TUNE_FLOPS:
            small = CPU_PROBLEM
            per_token = (
                MODEL_FWD_BWD_FACTOR * small["heads"] * small["intermediate"] * small["head_dim"]
            )
            fits = 1 << max(0, int(CPU_MAX_TUNE_FLOPS // per_token).bit_length() - 1)
            tokens = min(problem.tokens, fits)  # the given tokens, or a power of 2 that fits
            raise CommandError(
                f"no GPU: {problem.describe()} is too big for Triton's interpreter "
                f"({flops:.2g} FLOPs per forward + backward, at most {CPU_MAX_TUNE_FLOPS:.0e} "
                f"here); tune it on a GPU, or try --heads {small['heads']} --kv-heads "
                f"{small['kv_heads']} --head-dim {small['head_dim']} --intermediate "
                f"{small['intermediate']} --experts {small['experts']} --tokens {tokens} "
                f"--dtype float32"
            )
    need, have = workload_bytes(problem), _device_memory(device)
    if have is not None and need > have:
        where = f"{device.gpu_name}'s" if device.is_gpu else "this host's"
        raise CommandError(
            f"{problem.describe()} does not fit: tuning it holds about "
            f"{need / 2**30:.0f} GiB, more than {where} {have / 2**30:.0f} GiB; "
            f"use fewer --tokens"
        )


def _check_storage(url: str) -> None:
    """Open the storage once, so a bad URL or an unreachable server is a one-line error."""
    from ..tuning.study import redact, storage_for

    try:
        storage_for(url)
    except Exception as exc:  # noqa: BLE001 - drivers raise their own types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CommandError(f"--storage {redact(url)}: {first}") from exc


def _progress_bar(budgets: dict[str, int], disable: bool):
    """A tqdm bar over the configs of every kernel, and the Tuner's progress callback."""
    from tqdm import tqdm

    bar = tqdm(
        total=sum(budgets.values()),
        unit="config",
        file=sys.stderr,
        disable=True if disable else None,
        dynamic_ncols=True,
    )
    names = list(budgets)
    base = {k: sum(budgets[n] for n in names[:i]) for i, k in enumerate(names)}

    def update(p) -> None:
        short = _short(p.kernel)
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

    lines = [
        f"Tuned {problem.describe()} on {device.gpu_name} ({device.target}, compute "
        f"capability {device.compute_capability})",
        f"timings: {timer.label}",
    ]
    for r in results:  # kernels timed otherwise (mhfgen.tuning.workload): how
        label = timer.label_for(r.variant) if r.variant else timer.label
        if label.startswith(timer.label + "; "):  # in context, beside another kernel
            lines.append(
                f"{r.kernel} timed {label.removeprefix(timer.label + '; ')}: its ms "
                f"are what it adds to the split backward"
            )
        elif label != timer.label:  # a decode-size forward, in CUDA graphs
            lines.append(f"{r.kernel} timed per call in CUDA graphs: {label}")
    if not timer.gpu_timings:
        lines.append(
            "NOTE: these are NOT GPU timings; they rank configs for Triton's "
            "interpreter only. Run `mhfgen tune` on a GPU for real ones."
        )
    header = ("kernel", "best config", "ms", "TFLOP/s", "default ms", "speed-up", "trials (failed)")
    rows = []
    for r in results:
        name = r.kernel if r.variant in (None, r.kernel) else f"{r.kernel}: {r.variant}"
        rows.append(
            (
                name,
                describe_config(r.winner) if r.winner else "none passed",
                f"{r.ms:.4g}" if r.ms else "-",
                f"{r.tflops:.3g}" if r.tflops else "-",
                f"{r.default_ms:.4g}" if r.default_ms else "-",
                f"{r.speedup:.2f}x" if r.speedup else "-",
                f"{r.evaluated} ({r.failed})",
            )
        )
    lines.append(table(header, rows))
    for r in results:  # the final re-timing: the finalists, the default, stored winners
        if len(r.side_by_side) > 1:
            lines.append(
                f"{r.kernel} side by side (ms): "
                + ", ".join(f"{describe_config(c)} {ms:.4g}" for c, ms in r.side_by_side)
            )
    if len(results) == 3 and all(r.ms for r in results):
        total = sum(r.ms for r in results)
        line = (
            f"forward + backward: {total:.4g} ms, "
            f"{tflops(problem.model_flops_fwd_bwd(), total):.3g} TFLOP/s (18*T*H*I*D)"
        )
        if all(r.default_ms for r in results):
            line += f", {sum(r.default_ms for r in results) / total:.2f}x the built-in defaults"
        lines.append(line)
    if db_path is not None:  # None: the winners did not read back (_not_stored)
        lines.append(f"stored in {db_path}")
    if storage:
        from ..tuning.study import journal_path, redact

        lines.append(
            f"study: optuna-dashboard {journal_path(storage) or redact(storage)}"
            f"  (the dashboard extra: pip install 'mhfgen[dashboard]')"
        )
    return "\n".join(lines)


def run(args) -> int:
    if args.from_record:
        return _run_recorded(args)
    return _run_problem(args)


def _run_recorded(args) -> int:
    """--from-record PATH: tune each recorded problem of this GPU with the other flags."""
    import copy

    import torch

    from ..paths import user_db_path
    from ..record import RecordError, read_problems
    from ..tuning.problem import DeviceFacts

    given = [f"--{n.replace('_', '-')}" for n in _PROBLEM_FLAGS if getattr(args, n) is not None]
    if given:
        raise CommandError(f"--from-record tunes the recorded problems; drop {', '.join(given)}")
    try:
        problems = read_problems(args.from_record)
    except RecordError as exc:
        raise CommandError(str(exc)) from exc
    if args.replay:
        from ..tuning.timer import ReplayTimer

        try:
            device = ReplayTimer(args.replay).device
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CommandError(f"--replay {args.replay}: {exc}") from exc
    else:
        device = DeviceFacts.of(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    here = [
        p
        for p in problems
        if (p.gpu_name, p.compute_capability) == (device.gpu_name, device.compute_capability)
    ]
    others: dict[str, int] = {}
    for p in problems:
        if p not in here:
            others[p.gpu_name] = others.get(p.gpu_name, 0) + 1
    for gpu, n in sorted(others.items()):
        print(
            f"{args.from_record}: {n} problem(s) recorded on {gpu}, not this device "
            f"({device.gpu_name}): tune them there",
            file=sys.stderr,
        )
    if not here:
        print(
            f"{args.from_record}: nothing recorded on {device.gpu_name} "
            f"({len(problems)} problem(s) in all)"
        )
        return 0
    db_path = args.db or str(user_db_path())
    codes, skipped = [], 0
    for i, p in enumerate(here, 1):
        kernels = _untuned(db_path, p, device) if not args.fresh else list(p.kernels)
        where = f"[{i}/{len(here)}] {p.spec.key()} at {p.tokens} tokens"
        if not kernels:
            skipped += 1
            print(f"{where}: already tuned", file=sys.stderr)
            continue
        print(f"{where}: {', '.join(kernels)}", file=sys.stderr)
        one = copy.copy(args)
        s = p.spec
        one.heads, one.kv_heads, one.head_dim = s.heads, s.kv_heads, s.head_dim
        one.experts, one.intermediate, one.dtype = s.experts, s.intermediate, s.dtype
        one.tokens, one.kernels = p.tokens, ",".join(kernels)
        try:
            codes.append(_run_problem(one))
        except CommandError as exc:
            print(f"{where}: error: {exc}", file=sys.stderr)
            codes.append(2)
    tuned = sum(c == 0 for c in codes)
    print(
        f"{args.from_record}: {len(here)} problem(s) on {device.gpu_name}: {tuned} tuned now, "
        f"{skipped} tuned before, {len(codes) - tuned} failed"
    )
    return 0 if tuned == len(codes) else 1


def _untuned(db_path: str, problem, device) -> list[str]:
    """The recorded kernels of `problem` without a current winner at exactly its tokens."""
    from pathlib import Path

    import triton

    from ..codegen import template_hash
    from ..tuning.db import TuningDB, TuningDBError, spec_columns

    if not Path(db_path).exists():
        return list(problem.kernels)
    try:
        with TuningDB.open(db_path, readonly=True) as db:
            winners = db.winners(**spec_columns(problem.spec), gpu_name=device.gpu_name)
    except TuningDBError as exc:
        raise CommandError(str(exc)) from exc
    current = [
        w
        for w in winners
        if w.key.tokens == problem.tokens
        and w.key.triton_version == triton.__version__
        and w.key.compute_capability == device.compute_capability
        and w.key.template_hash == template_hash(w.key.variant)
    ]
    # a recorded variant is done with a winner of its own, a recorded op with one of any
    # of its variants
    done = {w.key.variant for w in current} | {w.key.op for w in current}
    return [k for k in problem.kernels if k not in done]


def _run_problem(args) -> int:
    from ..paths import user_db_path
    from ..tuning.db import TuningDB, TuningDBError
    from ..tuning.search import storage_path
    from ..tuning.study import StudyBusyError, study_lock

    kernels = _kernels(args.kernels)
    if args.trials is not None and args.trials < 1:
        raise CommandError(f"--trials must be >= 1, got {args.trials}")
    for flag in ("workers", "batch", "jobs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CommandError(f"--{flag} must be >= 1, got {value}")
    if not args.hang_timeout >= 0:  # NaN too
        raise CommandError(f"--hang-timeout must be >= 0 (0: no limit), got {args.hang_timeout}")
    problem, device, kind, replay, storage, bare = _setup(args)
    from ..tuning.search import tuning_units

    kernels = tuning_units(kernels, problem.spec, problem.tokens)
    if not kernels:
        raise CommandError(
            f"--kernels: no kernel variant runs {problem.describe()} on {problem.spec.target}"
        )
    gpus = None
    if args.workers > 1 and kind == "gpu":
        from ..tuning.workers import visible_gpus

        gpus = visible_gpus()
        if len(gpus) < args.workers:
            raise CommandError(
                f"--workers {args.workers}: only {len(gpus)} GPU(s) visible "
                f"({','.join(gpus) or 'none'}); one worker per GPU"
            )
        gpus = gpus[: args.workers]
    db_path = args.db or str(user_db_path())
    with contextlib.ExitStack() as stack:
        if args.storage is None and storage is not None:  # this problem's private study
            try:
                stack.enter_context(study_lock(storage_path(storage)))
            except StudyBusyError as exc:
                raise CommandError(str(exc)) from exc
            except OSError as exc:
                raise CommandError(
                    f"cannot lock the study {storage_path(storage)} ({exc}); "
                    f"set MHFGEN_CACHE_DIR to a writable folder"
                ) from exc
        try:  # a --db the user named gets its file created, never its folders
            db = TuningDB.open(db_path, create_parents=args.db is None)
        except TuningDBError as exc:
            raise CommandError(str(exc)) from exc
        return _run_locked(
            args, problem, device, kind, replay, storage, bare, gpus, db, db_path, kernels
        )


def _run_locked(
    args, problem, device, kind, replay, storage, bare, gpus, db, db_path, kernels
) -> int:
    """run()'s search, once the study is this process's and the database is open."""
    from ..tuning.db import TuningDBError
    from ..tuning.search import SearchSettings
    from ..tuning.study import redact

    if not device.is_gpu:
        where = "a small problem " if bare else ""
        print(
            f"No GPU here: tuning {where}through Triton's interpreter on the CPU. Its "
            f"timings are interpreter wall-clock times, NOT GPU timings.",
            file=sys.stderr,
        )
    batch = args.batch or min(16, os.cpu_count() or 1)
    settings = SearchSettings(
        trials=args.trials,
        batch=max(1, batch),
        strategy=args.strategy,
        seed=args.seed,
        fresh=args.fresh,
        hang_s=args.hang_timeout if args.hang_timeout > 0 else None,
    )
    who = ""
    if args.workers > 1:
        who = f" with {args.workers} workers" + (f" (GPUs {','.join(gpus)})" if gpus else "")
    print(
        f"Tuning {', '.join(kernels)} for {problem.describe()} on {device.gpu_name}{who}",
        file=sys.stderr,
    )
    if args.storage:
        print(f"Study storage: {redact(args.storage)}", file=sys.stderr)
    from ..tuning.timer import DeviceLost

    previous = signal.signal(signal.SIGTERM, _terminate)
    timer = None
    try:
        if args.workers > 1:
            timer, results = _tune_with_workers(
                args, problem, device, kind, replay, storage, db, db_path, settings, kernels, gpus
            )
        else:
            from ..tuning.workers import build_timer

            timer = replay or build_timer(
                kind, problem, args.seed, args.jobs or os.cpu_count() or 1
            )
            if args.record:
                from ..tuning.timer import RecordingTimer

                timer = RecordingTimer(timer, device)
            results = _tune_here(args, problem, device, timer, db, settings, storage, kernels)
    except KeyboardInterrupt:
        print(
            "\nInterrupted: finished trials are stored; run the same command again to resume.",
            file=sys.stderr,
        )
        raise
    except DeviceLost as exc:
        print(
            f"mhfgen tune: a candidate faulted and the GPU context is lost ({exc}); it is "
            f"stored as a failed trial with the finished ones: run the same command "
            f"again to resume",
            file=sys.stderr,
        )
        return 1
    except TuningDBError as exc:  # a full disk, a lock held past the whole wait
        resume = (
            "; the trials finished before it are kept in the study: run the same "
            "command again to resume"
            if storage
            else ""
        )
        raise CommandError(f"{exc}{resume}") from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        if timer is not None:
            if args.record:
                timer.save(args.record)
            timer.close()
        db.close()
    missing = _not_stored(db_path, problem, device, results)
    print(_summary(problem, device, timer, results, None if missing else db_path, storage))
    if missing:
        print(f"mhfgen tune: error: {missing}", file=sys.stderr)
        return 1
    return 0 if all(r.winner for r in results) else 1


def _not_stored(db_path, problem, device, results) -> str | None:
    """None when every winner of `results` reads back from the file at `db_path` (opened
    afresh: the file deleted or replaced while the tune ran is not the one written),
    else a line saying which are missing and why."""
    from pathlib import Path

    from ..tuning.db import TuningDB, TuningDBError, spec_columns

    expected = [r for r in results if r.winner is not None]
    if not expected:
        return None
    again = "the trials are kept in the study: run the same command again to store the winners"
    if not Path(db_path).is_file():
        return f"{db_path} no longer exists (deleted while tuning?); nothing is stored; {again}"
    try:
        with TuningDB.open(db_path, readonly=True) as db:
            stored = db.winners(
                **spec_columns(problem.spec),
                tokens=problem.tokens,
                gpu_name=device.gpu_name,
                compute_capability=device.compute_capability,
            )
    except TuningDBError as exc:
        return f"cannot read the winners back: {exc}"
    lost = [
        r.kernel
        for r in expected
        if not any(w.key.variant == r.winner.variant and w.config == r.winner for w in stored)
    ]
    if lost:
        return (
            f"the winners of {', '.join(lost)} are not in {db_path} after the write "
            f"(the file was replaced while tuning?); {again}"
        )
    return None


def _open_studies(tuner, kernels, storage):
    from ..tuning.study import redact

    try:
        return {k: tuner.open_study(k) for k in kernels}
    except Exception as exc:  # noqa: BLE001 - the storage's own errors
        if storage is None or isinstance(exc, KeyboardInterrupt):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CommandError(f"cannot open the study in {redact(storage)}: {first}") from exc


def _tune_here(args, problem, device, timer, db, settings, storage, kernels):
    """--workers 1: search and finish in this process (sharing the study with other
    hosts when --storage is given)."""
    from ..tuning.workers import command_tuner

    tuner = command_tuner(problem, device, timer, db, settings, storage, args.storage is not None)
    studies = _open_studies(tuner, kernels, storage)
    resumed = sum(s.resumed for s in studies.values())
    if resumed:
        print(f"Resuming: {resumed} configs already evaluated", file=sys.stderr)
    bar, tuner.progress = _progress_bar(
        {k: tuner.budget_of(s) for k, s in studies.items()}, args.no_progress
    )
    try:
        return tuner.tune(kernels, studies)
    finally:
        bar.close()


def _tune_with_workers(
    args, problem, device, kind, replay, storage, db, db_path, settings, kernels, gpus
):
    """--workers N: N worker processes search the shared study; this process shows their
    progress, evaluates what they left (a worker that died), then finishes each kernel
    (mhfgen.tuning.workers). Returns (the timer that re-timed the winners, results)."""
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from ..tuning.search import Tuner
    from ..tuning.timer import RecordingTimer
    from ..tuning.workers import WorkerJob, WorkerPool, build_timer

    folder = Path(tempfile.mkdtemp(prefix="mhfgen-workers-"))
    if storage is None:  # --replay without --storage: a study for this run only
        storage = f"journal:{folder / 'study.journal'}"
    tuner = Tuner(problem, device, None, db, settings, storage, shared=True)
    studies = _open_studies(tuner, kernels, storage)  # creates them; applies --fresh
    resumed = sum(s.resumed for s in studies.values())
    if resumed:
        print(f"Resuming: {resumed} configs already evaluated", file=sys.stderr)
    jobs = args.jobs or max(1, (os.cpu_count() or 1) // args.workers)
    pool = WorkerPool(
        [
            WorkerJob(
                index=i,
                spec=problem.spec.as_dict(),
                tokens=problem.tokens,
                device=dataclasses.asdict(device),
                settings=dataclasses.asdict(settings),
                storage=storage,
                kernels=kernels,
                timer=kind,
                seed=args.seed,
                jobs=jobs,
                replay=args.replay,
                db=db_path,
                record=str(folder / f"worker{i}.timings.json") if args.record else None,
                verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
            )
            for i in range(args.workers)
        ],
        folder,
        gpus,
    )
    bar, tuner.progress = _progress_bar(
        {k: tuner.budget_of(s) for k, s in studies.items()}, args.no_progress
    )

    def poll() -> None:
        try:
            for k, study in studies.items():
                study.refresh()
                tuner.report(k, study)
        except Exception as exc:  # noqa: BLE001 - the bar waits for the next poll
            logging.getLogger(__name__).debug("progress poll failed: %s", exc)

    timer = None
    try:
        pool.start()
        failed = pool.wait(poll)
        for w in failed:
            where = f" (GPU {w.gpu})" if w.gpu is not None else ""
            print(
                f"worker {w.job.index}{where} failed with exit status {w.proc.returncode}; "
                f"its log, {w.log_path}, ends with:\n{w.tail()}",
                file=sys.stderr,
            )
        # the finalists are in Triton's cache already: no compile pool to re-time them
        timer = replay if replay is not None else build_timer(kind, problem, args.seed, 1)
        if args.record:
            timer = RecordingTimer(timer, device)
            for w in pool.workers:
                if w.job.record and Path(w.job.record).exists():
                    timer.absorb(json.loads(Path(w.job.record).read_text()))
        tuner.timer = timer
        tuner.search(kernels, studies)  # what dead workers left, if anything
        results = [tuner.finish(k, studies[k]) for k in kernels]
    except BaseException:
        pool.stop()
        if timer is not None:
            if args.record:
                timer.save(args.record)
            timer.close()
        raise
    finally:
        bar.close()
    if not failed:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"worker logs kept in {folder}", file=sys.stderr)
    return timer, results


def _terminate(signum, frame) -> None:
    """SIGTERM: unwind like Ctrl-C, so open trials are marked and workers stopped."""
    raise KeyboardInterrupt
