"""`mhfgen doctor`: what this machine offers mhfgen."""

from __future__ import annotations

import os
import platform
import sys

from .common import add_command
from .output import add_json_arg, emit_json, key_values, text_stream

#: the format of the --json document (keys: docs/SCRIPTING.md)
DOCTOR_FORMAT = "mhfgen-doctor/1"


def register(sub) -> None:
    p = add_command(
        sub,
        "doctor",
        run,
        help="report torch, Triton, GPU and database paths",
        description="Report the versions, GPU and paths mhfgen uses here.",
    )
    add_json_arg(p, DOCTOR_FORMAT)


def run(args) -> int:
    import torch
    import triton

    from .. import __version__, paths

    gpu_doc = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = (
            f"{props.name} (compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} SMs)"
        )
        gpu_doc = {
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
        }
    else:
        gpu = "none (kernels run through Triton's interpreter on CPU tensors)"
    shipped = paths.shipped_db_path()
    user_ok, user_state = _user_db_state(paths.user_db_path())
    from ..kernels.launch import DIRECT_LAUNCH, DIRECT_LAUNCH_TRITON, JIT_LAUNCH_REQUESTED

    if not torch.cuda.is_available():
        launch = "through Triton's interpreter (no compiled binaries)"
    elif DIRECT_LAUNCH:
        launch = (
            "compiled binary after the first launch, TMA operands encoded once per address "
            "(kernels.launch.DirectLaunch)"
        )
    elif JIT_LAUNCH_REQUESTED:
        launch = "JITFunction.run on every call (MHFGEN_JIT_LAUNCH is set)"
    else:
        launch = (
            f"JITFunction.run on every call (DirectLaunch is tested on Triton "
            f"{', '.join(v + 'x' for v in DIRECT_LAUNCH_TRITON)} only)"
        )
    rows = [
        ("mhfgen", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", triton.__version__),
        ("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")),
        ("gpu", gpu),
        ("launches", launch),
        ("user database", f"{paths.user_db_path()} ({user_state})"),
        ("shipped database", f"{shipped}{'' if shipped.exists() else ' (absent)'}"),
        ("templates", str(paths.templates_dir())),
        ("kernel variants", _variants_summary()),
        ("cache dir", str(paths.cache_dir())),
    ]
    from ..record import RECORD_ENV
    from ..record import TUNE_ON_MISS_ENV as ENABLE_ENV
    from ..record import tune_on_miss_enabled as enabled

    summary = _shipped_summary(shipped)
    rows.append(("shipped configs", summary))
    rows.append(("recording", os.environ.get(RECORD_ENV) or f"off ({RECORD_ENV} unset)"))
    tune_on_miss = enabled()
    rows.append(
        (
            "tune on miss",
            "on"
            if tune_on_miss
            else f"off ({ENABLE_ENV}={os.environ[ENABLE_ENV]!r})"
            if ENABLE_ENV in os.environ
            else f"off ({ENABLE_ENV} unset)",
        )
    )
    print(key_values(rows), file=text_stream(args))
    emit_json(
        args,
        {
            "format": DOCTOR_FORMAT,
            "mhfgen": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "triton_interpret": os.environ.get("TRITON_INTERPRET"),
            "gpu": gpu_doc,
            "launches": launch,
            "user_db": str(paths.user_db_path()),
            "user_db_ok": user_ok,
            "user_db_state": user_state,
            "shipped_db": str(shipped),
            "shipped_db_exists": shipped.exists(),
            "templates": str(paths.templates_dir()),
            "cache_dir": str(paths.cache_dir()),
            "shipped_configs": summary,
            "record": os.environ.get(RECORD_ENV) or None,
            "tune_on_miss": tune_on_miss,
        },
    )
    if not user_ok:
        print(
            f"mhfgen doctor: the user database {paths.user_db_path()} is unusable: {user_state}",
            file=sys.stderr,
        )
        return 1
    return 0


def _user_db_state(path) -> tuple[bool, str]:
    """(usable, what it holds): absent, N tuned configs, or why it cannot be used (not
    mhfgen's, damaged pages found by SQLite's quick_check, ...)."""
    from ..tuning.db import TuningDB, TuningDBError

    if not path.exists():
        return True, "absent: `mhfgen tune` or `mhfgen import` creates it"
    try:
        with TuningDB.open(path, readonly=True) as db:
            problem = db.integrity_problem()
            if problem is not None:
                return False, f"damaged (SQLite's quick_check: {problem})"
            count = len(db.winners())
    except (TuningDBError, OSError) as exc:
        return False, str(exc)
    return True, f"{count} tuned config(s)"


def _variants_summary() -> str:
    """The registered kernel variants per op, with their family."""
    from .. import registry

    return "; ".join(
        f"{op}: " + ", ".join(f"{v.stem} ({v.family})" for v in registry.variants_for(op))
        for op in registry.OPS
    )


def _shipped_summary(path) -> str:
    """How many shipped winners still run the code they were tuned with (the current
    template hash, or an unchanged code hash; others are never used), per GPU."""
    if not path.exists():
        return "none"
    from .. import codegen, registry
    from ..tuning.db import TuningDB, TuningDBError
    from ..tuning.lookup import still_current

    try:
        with TuningDB.open(path, readonly=True) as db:
            winners = db.winners()
    except TuningDBError as exc:
        return f"unreadable: {exc}"
    current = {k: codegen.template_hash(k) for k in registry.stems()}
    per_gpu: dict[str, list[int]] = {}
    for w in winners:
        counts = per_gpu.setdefault(w.key.gpu_name, [0, 0])
        counts[0] += still_current(w, current)
        counts[1] += 1
    return (
        "; ".join(
            f"{gpu}: {ok} of {n} valid for the current templates"
            for gpu, (ok, n) in sorted(per_gpu.items())
        )
        or "none"
    )
