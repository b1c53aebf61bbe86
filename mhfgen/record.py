"""Run-time recording of the problems dispatch serves without an exact tuned config.

With MHFGEN_RECORD=PATH, every (kernel, spec, tokens, GPU) that the dispatcher serves from
anything but an exact tuned key (a same-bucket or nearest tuned shape, or the built-in
heuristic) is appended to PATH as one JSON line, once per key per process; `kernel` is
what the dispatcher was asked for: an op (fwd, bwd_dq, bwd_dkv: a model's calls) or a
variant stem (a launcher called directly):

    {"kernel": "fwd", "heads": 16, "kv_heads": 16, "head_dim": 128,
     "experts": 22, "expert_dim": 256, "dtype": "bfloat16", "target": "sm90",
     "tokens": 16384, "gpu_name": "NVIDIA H200", "compute_capability": "9.0",
     "triton_version": "3.6.0", "source": "heuristic", "pid": 4242, "time": 1764633600.0}

`mhfgen tune --from-record PATH` then tunes every recorded problem on this GPU (see
read_problems). Many processes may append to one file (the ranks of one job): the file
is opened with O_APPEND and each line goes out in one write() under an exclusive flock,
so lines never interleave, and readers skip a torn last line of a process killed mid-write.

MHFGEN_TUNE_ON_MISS=1 (off by default) additionally tunes a missed key in this process,
on first sight, with a small budget; both act through on_miss, the one call the dispatcher
makes for a choice whose source is not 'exact'. The tuning itself is the tuner's
(mhfgen.tuning.on_miss), which this runtime module never imports: the tuner registers its
function here (register_miss_tuner, when mhfgen.tuning.on_miss is imported), and where
nothing has, the function an installed distribution names under the entry-point group
MISS_TUNER_GROUP is loaded on the first miss (mhfgen's pyproject.toml names its own).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import device as _device
from . import paths, registry
from .config_fields import token_count
from .env import flag
from .spec import SPEC_FIELDS, KernelSpec
from .tuning.lookup import Choice

log = logging.getLogger(__name__)

#: the JSON-lines file that dispatch misses are appended to
RECORD_ENV = "MHFGEN_RECORD"
#: set to 1 to tune a missed key in this process (off by default; see miss_tuner)
TUNE_ON_MISS_ENV = "MHFGEN_TUNE_ON_MISS"
#: the entry-point group under which an installed tuner names its tune-on-miss function,
#: called as fn(kernel, spec, tokens, device) -> Choice | None
MISS_TUNER_GROUP = "mhfgen.miss_tuner"

_seen: set[tuple] = set()
_refused: set[str] = set()  # record paths refused (RecordPathError), warned about once
_lock = threading.Lock()
#: the tune-on-miss function the tuner registered (None: not yet looked for)
_miss_tuner: Callable | None = None
_no_miss_tuner = False  # looked for, none installed (warned once)


class RecordError(ValueError):
    """A record file that cannot be read (one line naming the file and the line)."""


def tune_on_miss_enabled() -> bool:
    """Whether MHFGEN_TUNE_ON_MISS is on (mhfgen.env.flag: 1/true/yes/on; off by default)."""
    return flag(TUNE_ON_MISS_ENV)


def register_miss_tuner(fn: Callable | None) -> None:
    """Make `fn(kernel, spec, tokens, device) -> Choice | None` what on_miss calls with
    MHFGEN_TUNE_ON_MISS on (None: look for an installed one again). mhfgen.tuning.on_miss
    registers its tune_missing when it is imported."""
    global _miss_tuner, _no_miss_tuner
    with _lock:
        _miss_tuner, _no_miss_tuner = fn, False


def miss_tuner() -> Callable | None:
    """The registered tune-on-miss function; where none is, the one an installed
    distribution names under MISS_TUNER_GROUP, loaded now (mhfgen names
    mhfgen.tuning.on_miss:tune_missing). None, with one warning, where there is none."""
    global _no_miss_tuner
    if _miss_tuner is not None or _no_miss_tuner:
        return _miss_tuner
    from importlib.metadata import distributions

    # every distribution's, not entry_points()'s first of each name: a stale egg-info of
    # an earlier build in the working directory would hide the installed one's
    points = {
        (p.name, p.value): p
        for dist in distributions()
        for p in dist.entry_points
        if p.group == MISS_TUNER_GROUP
    }
    for _, point in sorted(points.items()):
        try:
            fn = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the caller
            log.warning(
                "mhfgen: cannot load the tune-on-miss function %s (%s: %s)",
                point.value,
                type(exc).__name__,
                exc,
            )
            continue
        if _miss_tuner is None:  # loading it may have registered it already
            register_miss_tuner(fn)
        return _miss_tuner
    log.warning(
        "mhfgen: %s is on but no tuner is installed (no %r entry point: reinstall "
        "mhfgen, or import mhfgen.tuning.on_miss); not tuning on a miss",
        TUNE_ON_MISS_ENV,
        MISS_TUNER_GROUP,
    )
    _no_miss_tuner = True
    return None


def on_miss(
    kernel: str, spec: KernelSpec, tokens: int, device: torch.device, choice: Choice
) -> Choice:
    """What the dispatcher calls for a choice that is not an exact tuned key: append it to
    $MHFGEN_RECORD, and with MHFGEN_TUNE_ON_MISS=1 tune it here and return the new winner.
    Never raises: recording or tuning problems are logged, the caller keeps `choice`."""
    path = os.environ.get(RECORD_ENV)
    if path:
        try:
            record_miss(path, kernel, spec, tokens, device, choice)
        except RecordPathError as exc:  # once per path: every later miss would say it again
            with _lock:
                first = path not in _refused
                _refused.add(path)
            if first:
                log.warning(
                    "mhfgen: cannot record a dispatch miss in %s: %s (not recording there)",
                    path,
                    exc,
                )
        except Exception as exc:  # noqa: BLE001 - recording must never break the caller
            log.warning("mhfgen: cannot record a dispatch miss in %s: %s", path, exc)
    if tune_on_miss_enabled():
        tune = miss_tuner()
        tuned = tune(kernel, spec, tokens, device) if tune is not None else None
        if tuned is not None:
            return tuned
    return choice


def record_miss(
    path: str | os.PathLike,
    kernel: str,
    spec: KernelSpec,
    tokens: int,
    device: torch.device,
    choice: Choice,
) -> bool:
    """Append one record line to `path` unless this process wrote the same key to it
    before; True when a line was written."""
    import triton

    gpu, cc = _device.gpu_name(device), _device.compute_capability(device)
    key = (str(Path(path).expanduser()), kernel, spec, tokens, gpu, cc)
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
    line = dict(
        kernel=kernel,
        **spec.as_dict(),
        tokens=tokens,
        gpu_name=gpu,
        compute_capability=cc,
        triton_version=triton.__version__,
        source=choice.source,
        pid=os.getpid(),
        time=round(time.time(), 3),
    )
    append_line(Path(path).expanduser(), json.dumps(line, sort_keys=True))
    return True


class RecordPathError(OSError):
    """A record path that is not a regular file, nor a new file in an existing folder."""


#: what a record path that is not a regular file is, tested in this order
_NOT_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISSOCK, "a socket"),
    (lambda mode: stat.S_ISCHR(mode) or stat.S_ISBLK(mode), "a device"),
)


def _not_a_file(path: Path, mode: int, write: bool) -> str:
    """The one-line reason a record path of file mode `mode` is refused."""
    kind = paths.file_kind(mode, _NOT_FILES, "not a file")
    hint = f"; point {RECORD_ENV} at a file" if write else ""
    return f"{path} is {kind}, not a regular file{hint}"


def open_record_file(path: Path, write: bool) -> int:
    """A descriptor of the regular file `path`: opened to append (created, in a folder
    that exists, when it does not) or to read. Never blocks: a FIFO, a device, a socket
    or a folder is a RecordPathError naming what it is, checked before opening and again
    on the open descriptor (O_NONBLOCK: opening a FIFO does not wait for its other end);
    a missing folder is a RecordPathError too (it is not created)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if write and not path.parent.is_dir():
            raise RecordPathError(
                f"{path.parent} does not exist or is not a folder; "
                f"create it or point {RECORD_ENV} at a file in an "
                f"existing folder"
            ) from None
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise RecordPathError(_not_a_file(path, mode, write))
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT if write else os.O_RDONLY
    flags |= getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise RecordPathError(_not_a_file(path, mode, write))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_line(path: Path, text: str) -> None:
    """Append `text` and a newline to the regular file `path` (open_record_file) in one
    write() under an exclusive lock."""
    data = (text.rstrip("\n") + "\n").encode()
    fd = open_record_file(path, write=True)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: O_APPEND alone
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
    finally:
        os.close(fd)  # closing releases the lock


def forget_seen() -> None:
    """Forget which keys this process recorded (tests; a new record file)."""
    with _lock:
        _seen.clear()
        _refused.clear()


@dataclass(frozen=True)
class RecordedProblem:
    """One problem to tune: a spec at a token count on one GPU, and the kernels of it that
    dispatch missed: ops (a model's calls: the dispatcher chose the variant) or variant
    stems (launchers called directly), ops first in mhfgen.registry order."""

    spec: KernelSpec
    tokens: int
    gpu_name: str
    compute_capability: str
    kernels: tuple[str, ...]


def read_records(path: str | os.PathLike) -> list[dict]:
    """The record lines of `path`; a torn last line (a writer killed mid-write) is skipped
    with a warning, any other bad line is a RecordError, and so is a path that is not a
    regular file (open_record_file: a FIFO is refused, not waited on).

    Torn means what a killed writer leaves: after at least one whole record, a last line
    without its newline that starts a JSON object and does not parse. A file whose only
    line is not JSON is an error, not a torn line: no writer of records wrote it."""
    path = Path(path).expanduser()
    try:
        with os.fdopen(open_record_file(path, write=False), encoding="utf-8") as f:
            content = f.read()
    except UnicodeDecodeError as exc:
        raise RecordError(
            f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise RecordError(f"cannot read {path}: {exc.strerror or exc}") from exc
    lines = content.splitlines()
    out = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                torn = (
                    number == len(lines)
                    and out
                    and not content.endswith("\n")
                    and text.lstrip().startswith("{")
                )
                if torn:
                    log.warning("%s: skipping a torn last line %d", path, number)
                    continue
                raise ValueError(f"not a JSON line ({exc.msg} at column {exc.colno})") from exc
            except RecursionError:
                raise ValueError("JSON nested too deeply") from None
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            missing = [
                k
                for k in ("kernel", *SPEC_FIELDS, "tokens", "gpu_name", "compute_capability")
                if k not in rec
            ]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            if rec["kernel"] not in registry.OPS and rec["kernel"] not in registry.stems():
                raise ValueError(f"unknown kernel {rec['kernel']!r}")
            token_count(rec["tokens"])
            KernelSpec(**{k: rec[k] for k in SPEC_FIELDS})
        except (ValueError, TypeError) as exc:
            raise RecordError(f"{path}, line {number}: {exc}") from exc
        out.append(rec)
    return out


def read_problems(path: str | os.PathLike) -> list[RecordedProblem]:
    """The distinct problems of a record file, in the order first recorded: records of
    one (spec, tokens, GPU) merge into one problem whose kernels are those recorded."""
    problems: dict[tuple, set[str]] = {}
    for rec in read_records(path):
        spec = KernelSpec(**{k: rec[k] for k in SPEC_FIELDS})
        key = (spec, rec["tokens"], rec["gpu_name"], rec["compute_capability"])
        problems.setdefault(key, set()).add(rec["kernel"])
    order = [*registry.OPS, *registry.stems()]
    return [
        RecordedProblem(spec, tokens, gpu, cc, tuple(k for k in order if k in kernels))
        for (spec, tokens, gpu, cc), kernels in problems.items()
    ]
