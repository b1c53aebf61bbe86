"""`mhfgen list`, `show`, `export`, `import`: what the tuning databases hold, and moving
tuned configs between machines as JSON with provenance."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path

from . import CommandError
from .common import add_command, add_problem_args, spec_from_args
from .output import add_json_arg, emit_json, printable, table, text_stream

#: the formats of the --json documents of list and show (keys: docs/SCRIPTING.md)
LIST_FORMAT, SHOW_FORMAT = "mhfgen-list/1", "mhfgen-show/1"


def register(sub) -> None:
    p = add_command(
        sub,
        "list",
        run_list,
        help="list the tuned configs stored, per GPU and shape",
        description="List the winners of the tuning databases (the user "
        "database, then the shipped one; or only --db), grouped by "
        "GPU, compute capability and Triton version.",
    )
    _add_db(p)
    _add_kernel(p)
    p.add_argument("--gpu", default=None, help="only this GPU name (e.g. 'NVIDIA H200')")
    add_json_arg(p, LIST_FORMAT)

    p = add_command(
        sub,
        "show",
        run_show,
        help="show the configs of one problem and how dispatch picks",
        description="For one problem: the config the dispatcher picks on this "
        "machine and why (exact key, same bucket, nearest tuned "
        "shape or heuristic), the winners stored for its spec, and "
        "the best trials at its shape bucket.",
    )
    add_problem_args(p)
    _add_db(p)
    p.add_argument(
        "--gpu", default=None, help="show records of this GPU name instead of this machine's device"
    )
    p.add_argument("--top", type=int, default=5, help="trials listed per kernel (default 5)")
    add_json_arg(p, SHOW_FORMAT)

    p = add_command(
        sub,
        "export",
        run_export,
        help="write tuned configs as JSON with provenance",
        description="Write the winners of a tuning database (with GPU, compute "
        "capability, versions, template hash, date and timings) to "
        "a JSON file that `mhfgen import` merges elsewhere.",
    )
    p.add_argument("-o", "--output", required=True, help="the JSON file to write ('-': stdout)")
    _add_db(p)
    _add_kernel(p)
    p.add_argument("--gpu", default=None, help="only this GPU name")

    p = add_command(
        sub,
        "import",
        run_import,
        help="merge tuned configs from an exported JSON file",
        description="Merge the winners of an `mhfgen export` file into a tuning "
        "database: new keys are added, for a stored key the faster "
        "record wins. Records tuned for another version of a "
        "kernel's template are refused (exit status 1).",
    )
    p.add_argument("file", help="the JSON file written by `mhfgen export`")
    _add_db(p)


def _add_kernel(p) -> None:
    p.add_argument(
        "--kernel",
        default=None,
        help="only this op (fwd, dq, dkv) or kernel variant (e.g. flash_mhf_fwd)",
    )


def _add_db(p) -> None:
    p.add_argument(
        "--db",
        default=None,
        help="the tuning database file (default: $MHFGEN_DB or "
        "tuning.sqlite in the cache folder, see `mhfgen doctor`; list/show also "
        "read the shipped one)",
    )


def _open(path, readonly: bool, create_parents: bool = True):
    from ..tuning.db import TuningDB, TuningDBError

    try:
        return TuningDB.open(path, readonly=readonly, create_parents=create_parents)
    except TuningDBError as exc:
        raise CommandError(str(exc)) from exc


def _layers(args) -> list[tuple[str, Path]]:
    """The databases a read command reads: --db alone, which must exist (a typo is an
    error, not "nothing tuned yet"), else the user and shipped layers."""
    from ..tuning.db import layer_paths

    if not args.db:
        return layer_paths()
    path = Path(args.db).expanduser()
    if not path.exists():
        raise CommandError(
            f"{path}: no such tuning database (--db names a file to read; "
            f"`mhfgen tune` and `mhfgen import` create one)"
        )
    return [("db", path)]


def _spec_text(key) -> str:
    return (
        f"H{key.heads}/Hkv{key.kv_heads} D{key.head_dim} E{key.experts}x{key.expert_dim} "
        f"{key.dtype}"
    )


def _fmt(x, spec: str = ".4g", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


#: the columns of a stored winner that list and show print (cells: _winner_cells)
WINNER_COLUMNS = ("bucket", "tokens", "ms", "TFLOP/s", "speed-up", "config")


def _winner_cells(w) -> tuple:
    """A winner's WINNER_COLUMNS: its bucket and tokens, time, TFLOP/s, speed-up over
    the default config, and config."""
    from ..tuning.search import describe_config

    return (
        w.key.bucket,
        w.key.tokens,
        _fmt(w.ms),
        _fmt(w.tflops, ".3g"),
        _fmt(w.speedup, ".2f", "x"),
        describe_config(w.config),
    )


def _kernel_filter(name):
    """The database filter of --kernel (CommandError for a name that is neither an op
    nor a variant)."""
    from .. import registry
    from ..tuning.exchange import kernel_filter

    if name is not None and name not in registry.stems():
        try:
            registry.op_named(name)
        except registry.RegistryError:
            raise CommandError(
                f"--kernel: unknown kernel {name!r}; use an op "
                f"({', '.join(registry.OPS)}, or fwd, dq, dkv) or a variant "
                f"({', '.join(registry.stems())})"
            ) from None
    return kernel_filter(name)


def run_list(args) -> int:
    from .. import registry
    from ..codegen import template_hash
    from ..tuning.db import TuningDBError
    from ..tuning.exchange import winner_as_dict
    from ..tuning.lookup import still_current
    from ..tuning.search import config_legend, describe_config

    out = text_stream(args)
    filters = _kernel_filter(args.kernel)  # a one-line error for an unknown name
    current = {k: template_hash(k) for k in registry.stems()}
    found = False
    doc = {"format": LIST_FORMAT, "databases": []}
    for layer, path in _layers(args):
        entry = {"layer": layer, "path": str(path), "exists": Path(path).exists(), "winners": []}
        doc["databases"].append(entry)
        if not entry["exists"]:
            print(f"{layer} database {path}: absent", file=out)
            continue
        with _open(path, readonly=True) as db:
            try:
                winners = db.winners(**filters, **({"gpu_name": args.gpu} if args.gpu else {}))
            except TuningDBError as exc:
                raise CommandError(str(exc)) from exc
        entry["winners"] = [
            dict(
                winner_as_dict(w),
                kernel=w.key.variant,  # its schema-2 name
                config_text=describe_config(w.config),
                current=still_current(w, current),
            )
            for w in winners
        ]
        print(f"{layer} database {path}: {len(winners)} tuned config(s)", file=out)
        groups: dict[tuple, list] = {}
        for w in winners:
            groups.setdefault(
                (w.key.gpu_name, w.key.compute_capability, w.key.triton_version), []
            ).append(w)
        for (gpu, cc, triton), ws in sorted(groups.items()):
            found = True
            print(printable(f"\n{gpu} (compute capability {cc}), Triton {triton}"), file=out)
            rows = [
                (
                    w.key.variant,
                    w.key.op,
                    _spec_text(w.key),
                    *_winner_cells(w),
                    "" if still_current(w, current) else "stale: kernel code changed",
                )
                for w in ws
            ]
            header = ["kernel", "op", "spec", *WINNER_COLUMNS, "note"]
            if not any(row[-1] for row in rows):  # no column of empty cells
                header, rows = header[:-1], [row[:-1] for row in rows]
            print(table(header, rows, indent="  "), file=out)
        print(file=out)
    if found:
        print("config codes:\n" + config_legend(), file=out)
    else:
        print("nothing tuned yet: run `mhfgen tune`", file=out)
    emit_json(args, doc)
    return 0


def run_show(args) -> int:
    import torch

    from .. import dispatch, registry
    from ..codegen import template_hash
    from ..device import compute_capability, gpu_name, target
    from ..tuning.buckets import shape_bucket
    from ..tuning.db import TuningDBError, spec_columns
    from ..tuning.exchange import winner_as_dict
    from ..tuning.search import config_legend, describe_config

    out = text_stream(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = spec_from_args(args, target(device))  # the flags' errors first
    for _, path in _layers(args):  # an unusable file is an error before anything prints
        if Path(path).exists():
            with _open(path, readonly=True) as db:
                problem = db.integrity_problem()  # show reads every table
            if problem is not None:
                raise CommandError(f"{path} is damaged (SQLite's quick_check: {problem})")
    gpu = args.gpu or gpu_name(device)
    bucket = shape_bucket(args.tokens)
    print(f"{spec.key()} at {args.tokens} tokens (bucket {bucket}) on {gpu}", file=out)
    doc = {
        "format": SHOW_FORMAT,
        "spec": spec.as_dict(),
        "tokens": args.tokens,
        "bucket": bucket,
        "gpu_name": gpu,
        "compute_capability": None if args.gpu else compute_capability(device),
        "kernels": {},
    }
    if args.db:
        os.environ["MHFGEN_DB"] = str(Path(args.db).expanduser())
    dispatch.clear_cache()
    spec_filter = dict(spec_columns(spec), gpu_name=gpu)
    choices: dict = {}  # op -> the dispatcher's choice (a variant and its config), or why none
    for variant in registry.all_variants():
        kernel, op = variant.stem, variant.op
        entry = {
            "op": op,
            "template_hash": template_hash(kernel),
            "dispatch": None,
            "databases": [],
        }
        doc["kernels"][kernel] = entry
        print(f"\n{kernel} (op {op}, template {entry['template_hash']})", file=out)
        if args.gpu is None:
            if op not in choices:
                with _not_observed():
                    try:
                        choices[op] = dispatch.explain_choice(op, spec, args.tokens, device)
                    except ValueError as exc:
                        choices[op] = str(exc)
            choice = choices[op]
            if isinstance(choice, str):
                print(f"  dispatch: {choice}", file=out)
            elif choice.variant != kernel:
                print(f"  dispatch picks {choice.variant} for {op}", file=out)
            else:
                entry["dispatch"] = {
                    "source": choice.source,
                    "layer": choice.layer,
                    "tuned_tokens": choice.tuned_tokens,
                    "variant": choice.variant,
                    "config": choice.config.as_dict(),
                    "config_text": describe_config(choice.config),
                }
                where = (
                    f", tuned at {choice.tuned_tokens} tokens, {choice.layer} database"
                    if choice.layer
                    else ""
                )
                print(
                    f"  dispatch picks {describe_config(choice.config)} ({choice.source}{where})",
                    file=out,
                )
        for layer, path in _layers(args):
            if not Path(path).exists():
                continue
            with _open(path, readonly=True) as db:
                try:
                    winners = db.winners(variant=kernel, **spec_filter)
                    trials = db.trials(variant=kernel, bucket=bucket, **spec_filter)
                except TuningDBError as exc:
                    raise CommandError(str(exc)) from exc
            ok = [t for t in trials if t.status == "ok"]
            failed: dict[str, int] = {}
            for t in trials:
                if t.status != "ok":
                    failed[t.stage or "?"] = failed.get(t.stage or "?", 0) + 1
            entry["databases"].append(
                {
                    "layer": layer,
                    "path": str(path),
                    "winners": [
                        dict(
                            winner_as_dict(w),
                            kernel=w.key.variant,
                            config_text=describe_config(w.config),
                        )
                        for w in winners
                    ],
                    "trials_timed": len(ok),
                    "trials_failed": failed,
                    "best_trials": [
                        {
                            "tokens": t.key.tokens,
                            "ms": t.ms,
                            "tflops": t.tflops,
                            "error": t.error,
                            "config": t.config.as_dict(),
                            "config_text": describe_config(t.config),
                        }
                        for t in ok[: max(0, args.top)]
                    ],
                }
            )
            if winners:
                print(f"  winners in the {layer} database:", file=out)
                print(
                    table(
                        (*WINNER_COLUMNS, "compute cap.", "triton", "template"),
                        [
                            (
                                *_winner_cells(w),
                                w.key.compute_capability,
                                w.key.triton_version,
                                w.key.template_hash,
                            )
                            for w in winners
                        ],
                        indent="    ",
                    ),
                    file=out,
                )
            if trials:
                fails = ", ".join(f"{n} {stage}" for stage, n in sorted(failed.items()))
                print(
                    f"  trials in the {layer} database at bucket {bucket}: {len(ok)} timed"
                    f"{', failed: ' + fails if fails else ''}",
                    file=out,
                )
                print(
                    table(
                        ("tokens", "ms", "TFLOP/s", "error", "config"),
                        [
                            (
                                t.key.tokens,
                                _fmt(t.ms),
                                _fmt(t.tflops, ".3g"),
                                _fmt(t.error, ".2g"),
                                describe_config(t.config),
                            )
                            for t in ok[: max(0, args.top)]
                        ],
                        indent="    ",
                    ),
                    file=out,
                )
    print("\nconfig codes:\n" + config_legend(), file=out)
    emit_json(args, doc)
    return 0


@contextlib.contextmanager
def _not_observed():
    """Dispatch decisions made to be shown, not served: neither recorded (MHFGEN_RECORD)
    nor tuned on the spot (MHFGEN_TUNE_ON_MISS)."""
    from ..record import RECORD_ENV, TUNE_ON_MISS_ENV

    saved = {k: os.environ.pop(k) for k in (RECORD_ENV, TUNE_ON_MISS_ENV) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def run_export(args) -> int:
    from ..paths import user_db_path
    from ..tuning.exchange import export_winners

    _kernel_filter(args.kernel)  # a one-line error before anything is read
    path = Path(args.db or user_db_path())
    if not path.exists():
        raise CommandError(f"{path}: no such tuning database")
    with _open(path, readonly=True) as db:
        filters = {**_kernel_filter(args.kernel), **({"gpu_name": args.gpu} if args.gpu else {})}
        doc = export_winners(db, **filters)
    text = json.dumps(doc, indent=1) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc}") from exc
        print(f"exported {len(doc['records'])} tuned config(s) from {path} to {args.output}")
    return 0


def run_import(args) -> int:
    from .. import registry
    from ..codegen import template_hash
    from ..paths import user_db_path
    from ..tuning.db import TuningDBError
    from ..tuning.exchange import ExchangeError, import_winners, parse_export

    try:
        data = json.loads(Path(args.file).read_text())
        records = parse_export(data)
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from exc
    except (ValueError, ExchangeError) as exc:  # JSON, UTF-8 and the records' checks
        raise CommandError(f"{args.file}: {exc}") from exc
    except RecursionError:
        raise CommandError(f"{args.file}: not an mhfgen export (JSON nested too deeply)") from None
    path = Path(args.db or user_db_path()).expanduser()
    with _open(path, readonly=False, create_parents=not args.db) as db:
        try:
            report = import_winners(db, records, {k: template_hash(k) for k in registry.stems()})
        except TuningDBError as exc:
            raise CommandError(f"the import failed and wrote nothing: {exc}") from exc
        except sqlite3.Error as exc:
            raise CommandError(f"{path}: the import failed and wrote nothing ({exc})") from exc
    for message in report.messages:
        print(f"mhfgen import: {message}", file=sys.stderr)
    print(
        f"imported into {path}: {report.added} added, {report.replaced} replaced (faster), "
        f"{report.kept} kept (the stored one is as fast or faster), {report.same} already "
        f"stored, {report.refused} refused"
        + (
            f"; {report.restamped} tuned for an older template whose code is unchanged, "
            f"stored under today's template hash"
            if report.restamped
            else ""
        )
    )
    return 1 if report.refused else 0
