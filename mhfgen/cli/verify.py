"""`mhfgen verify`: the generated kernels against the float64 reference on this machine."""

from __future__ import annotations

import sys
import time

from . import CommandError
from .common import add_command, tokens_flag
from .output import add_json_arg, emit_json, json_to_stdout, table, text_stream

#: the format of the --json document (keys: docs/SCRIPTING.md)
VERIFY_FORMAT = "mhfgen-verify/1"
OUTPUTS = ("o", "dq", "dk", "du", "dv", "dr")


def register(sub) -> None:
    p = add_command(
        sub,
        "verify",
        run,
        help="check the kernels against the float64 reference here",
        description="Run the forward and backward kernels on the reference problems (GPU: the "
        "presets at --tokens tokens in bf16, fp16 and fp32, plus odd shapes; CPU: "
        "small problems through Triton's interpreter in fp32 and fp16) and print "
        "each output's relative error against its tolerance. Exit 1 on a failure.",
    )
    p.add_argument(
        "--presets",
        default=None,
        help="comma list of presets to check on a GPU (default: all three; "
        "the CPU checks small problems only)",
    )
    p.add_argument(
        "--dtypes",
        default=None,
        help="comma list (default: bfloat16,float16,float32,bfloat16_e4m3 on a GPU, "
        "float32,float16 on the CPU); bfloat16_e4m3/float16_e4m3: the forward on FP8 "
        "expert weights against float64 on the dequantised weights (no gradients; with "
        "--matrix: each forward variant that takes them)",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="tokens of the preset problems on a GPU (default 16384)",
    )
    p.add_argument(
        "--backward",
        default="all",
        choices=("all", "dispatched", "fused", "split"),
        help="which backward computes the gradients: the one-pass kernel, the "
        "split pair (dq/dr, then dk/du/dv: what deterministic runs use), "
        "the form the dispatcher picks, or both forms, a row each "
        "(default: all)",
    )
    p.add_argument(
        "--matrix",
        action="store_true",
        help="the verification matrix instead: every registered variant forced "
        "one at a time (not only what dispatch picks) on every documented "
        "input form (r in fp32 and in q's dtype, q as a strided or "
        "transposed view, strided weights, B > 1, L = 1, 37 and the tile "
        "edges 63/65/127/129, GQA, D 64/96/128, E = 1, De = 80), each output "
        "checked whole and row by row; docs/VERIFY.md",
    )
    p.add_argument(
        "--shapes",
        default=None,
        help="with --matrix: comma list of matrix shapes (default: all; names in "
        "mhfgen.verify_matrix)",
    )
    p.add_argument(
        "--variants",
        default=None,
        help="with --matrix: comma list of variant stems (default: every one)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --matrix: child processes that compile and run (shape, dtype) "
        "groups side by side (default 1)",
    )
    add_json_arg(p, VERIFY_FORMAT)


def _cases(args, gpu: bool):
    from ..presets import PRESETS
    from ..verification import Case

    odd = (
        [
            Case("L1", 1, 1, 8, 8, 128, 4, 256),
            Case("L37_gqa", 1, 37, 8, 2, 128, 4, 256),
            Case("D96_De80", 2, 333, 4, 4, 96, 3, 80),
            Case("E1_D64", 2, 1000, 4, 1, 64, 1, 512),
        ]
        if gpu
        else [
            Case("small", 2, 16, 2, 2, 32, 2, 64),
            Case("L1", 1, 1, 2, 1, 32, 2, 32),
            Case("L37_gqa", 1, 37, 4, 2, 32, 2, 32),
            Case("D96_De80", 1, 9, 2, 2, 96, 2, 80),
            Case("E1", 1, 5, 2, 2, 16, 1, 64),
        ]
    )
    if not gpu:
        return odd
    cases = []
    tokens = 16384 if args.tokens is None else args.tokens
    tokens_flag(tokens)
    for name in filter(None, (args.presets or "128M,370M,1.3B").split(",")):
        if name not in PRESETS:
            raise CommandError(f"--presets: unknown preset {name!r}; known: {', '.join(PRESETS)}")
        p = PRESETS[name]
        batch = max(1, tokens // 2048)
        cases.append(
            Case(
                name, batch, tokens // batch, p.heads, p.heads, p.head_dim, p.experts, p.expert_dim
            )
        )
    return cases + odd


def run(args) -> int:
    import torch

    from .. import device as _device
    from ..spec import DTYPES, FP8_WEIGHT_DTYPES
    from ..tolerances import FP8_ACTIVATIONS_BAR, tolerance
    from ..verification import compare, kernel_outputs, make_inputs, reference_outputs

    gpu = torch.cuda.is_available()
    dev = torch.device("cuda" if gpu else "cpu")
    if args.json not in (None, "-"):  # before the checks run, not after
        from pathlib import Path

        json_path = Path(args.json)
        if json_path.is_dir() or not json_path.parent.is_dir():
            raise CommandError(
                f"--json: cannot write {args.json} (a folder, or in a folder that does not exist)"
            )
    for flag, value in (("--presets", args.presets), ("--tokens", args.tokens)):
        if value is not None and not gpu:
            raise CommandError(
                f"{flag} needs a GPU: without one verify checks small problems "
                f"through Triton's interpreter (leave {flag} out)"
            )
    default = "bfloat16,float16,float32,bfloat16_e4m3" if gpu else "float32,float16"
    names = (args.dtypes or default).split(",")
    known = (*DTYPES, *FP8_WEIGHT_DTYPES)
    for name in names:
        if name not in known:
            raise CommandError(f"--dtypes: unknown dtype {name!r}; expected {', '.join(known)}")
        if name.startswith("bfloat16") and not gpu:
            raise CommandError(f"{name} needs a GPU: Triton's interpreter cannot multiply bf16")
    where = _device.gpu_name(dev)
    out = text_stream(args)
    if args.matrix:
        return _run_matrix(args, gpu, dev, names, where, out)
    for flag in ("shapes", "variants"):
        if getattr(args, flag) is not None:
            raise CommandError(f"--{flag} needs --matrix")
    print(
        f"mhfgen verify on {where}" + ("" if gpu else " (Triton interpreter, small problems)"),
        file=out,
    )
    forms = ("fused", "split") if args.backward == "all" else (args.backward,)
    rows, lines, failed = [], [], 0
    cases = _cases(args, gpu)
    per_case = sum(1 if n in FP8_WEIGHT_DTYPES else len(forms) for n in names)
    total, began = len(cases) * per_case, time.perf_counter()
    for case in cases:
        ref_inputs = make_inputs(case, torch.float32, dev, seed=0)
        for name in names:
            if name in FP8_WEIGHT_DTYPES:
                line, row = _fp8_row(case, name, ref_inputs)
                lines.append(line)
                _progress(args, line, len(lines), total, began)
                rows.append(row)
                failed += not row["ok"]
                continue
            dtype = DTYPES[name]
            inputs = [t.to(dtype) if i < 4 or i == 5 else t for i, t in enumerate(ref_inputs)]
            q, k, u, v, r, do = inputs
            start = time.perf_counter()
            try:  # once per dtype: every backward form is compared with the same reference
                expected, reason = reference_outputs(q, k, u, v, r, do), None
            except Exception as exc:  # noqa: BLE001 - a failing reference fails its rows
                expected, reason = None, _reason(exc)
            for form in forms:
                row = {
                    "case": case.name,
                    "dtype": name,
                    "backward": form,
                    "tokens": case.tokens,
                    "shape": case.__dict__,
                }
                if reason is None:
                    try:
                        got = kernel_outputs(q, k, u, v, r, do, backward=form)
                    except Exception as exc:  # noqa: BLE001 - a failing kernel is a failed row
                        got, why = None, _reason(exc)
                else:
                    got, why = None, reason
                if got is None:
                    lines.append(
                        (case.name, name, form, case.tokens, *[""] * len(OUTPUTS), f"FAIL {why}")
                    )
                    _progress(args, lines[-1], len(lines), total, began)
                    rows.append({**row, "ok": False, "error": why})
                    failed += 1
                    continue
                checks = compare(got, expected, dtype)
                bad = [c for c in checks if not c.ok]
                failed += bool(bad)
                status = "ok" if not bad else "FAIL " + ",".join(c.output for c in bad)
                errors = {c.output: f"{c.error:.2e}" for c in checks}
                lines.append(
                    (
                        case.name,
                        name,
                        form,
                        case.tokens,
                        *(errors.get(o, "") for o in OUTPUTS),
                        status,
                    )
                )
                _progress(args, lines[-1], len(lines), total, began)
                rows.append(
                    {
                        **row,
                        "seconds": time.perf_counter() - start,
                        "errors": {c.output: c.error for c in checks},
                        "tolerances": {c.output: c.tolerance for c in checks},
                        "ok": not bad,
                    }
                )
                start = time.perf_counter()
                del got
            del expected
    if sys.stderr.isatty() and not json_to_stdout(args):
        print(file=sys.stderr)  # past the progress line
    print(table(("case", "dtype", "backward", "tokens", *OUTPUTS, "status"), lines), file=out)
    tols = {n: (tolerance(n), tolerance(n, grad=True)) for n in names}
    print(
        "tolerances (output, gradients): "
        + ", ".join(f"{n} {a:.1e}/{b:.1e}" for n, (a, b) in tols.items())
        + (
            f"; FP8 arithmetic (a kernel that quantises activations): output "
            f"{FP8_ACTIVATIONS_BAR:.1e}"
            if set(names) & set(FP8_WEIGHT_DTYPES)
            else ""
        ),
        file=out,
    )
    import triton

    emit_json(
        args,
        {
            "format": VERIFY_FORMAT,
            "gpu": where,
            "compute_capability": _device.compute_capability(dev),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "passed": len(rows) - failed,
            "failed": failed,
            "results": rows,
        },
    )
    print(f"{len(rows) - failed} of {len(rows)} passed", file=out)
    return 1 if failed else 0


def _fp8_row(case, name: str, ref_inputs) -> tuple[tuple, dict]:
    """verify's row of an FP8-weight dtype: the forward of mhfgen.flash_mhf_fp8 on the
    case's weights quantised to e4m3, against float64 on the dequantised weights, held to
    the bar of the variant the dispatcher ran (tolerances.tolerance_for: a variant that
    quantises the activations to FP8 too has its own); the gradients are n/a (FP8 weights
    serve, they do not train)."""
    import torch

    from .. import registry
    from ..dispatch import explain_choice
    from ..kernels.configs import spec_of
    from ..ops import flash_mhf_fp8
    from ..spec import DTYPES, FP8_WEIGHT_DTYPES
    from ..validation import check_flash_mhf_inputs
    from ..verification import compare, fp8_inputs, reference_outputs

    dtype = DTYPES[FP8_WEIGHT_DTYPES[name]]
    dense = [t.to(dtype) if i < 4 or i == 5 else t for i, t in enumerate(ref_inputs)]
    start = time.perf_counter()
    row = {"case": case.name, "dtype": name, "backward": "n/a", "tokens": case.tokens}
    row["shape"] = case.__dict__
    try:
        fp8, dequantised = fp8_inputs(*dense)
        expected = reference_outputs(*dequantised)
        with torch.no_grad():
            got = {"o": flash_mhf_fp8(*fp8)}
        problem = check_flash_mhf_inputs(*fp8[:5])
        spec = spec_of(problem, fp8[0], fp8[1])
        variant = registry.get(explain_choice("fwd", spec, problem.tokens, fp8[0].device).variant)
    except Exception as exc:  # noqa: BLE001 - a failing kernel is a failed row
        why = _reason(exc)
        line = (case.name, name, "n/a", case.tokens, *[""] * len(OUTPUTS), f"FAIL {why}")
        return line, {**row, "ok": False, "error": why}
    row["variant"] = variant.stem
    (check,) = compare(got, expected, name, outputs=("o",), variant=variant)
    status = "ok" if check.ok else "FAIL o"
    errors = [f"{check.error:.2e}"] + ["n/a"] * (len(OUTPUTS) - 1)
    line = (case.name, name, "n/a", case.tokens, *errors, status)
    return line, {
        **row,
        "seconds": time.perf_counter() - start,
        "errors": {"o": check.error},
        "tolerances": {"o": check.tolerance},
        "ok": check.ok,
    }


def _run_matrix(args, gpu: bool, dev, names: list, where: str, out) -> int:
    """`mhfgen verify --matrix`: mhfgen.verify_matrix over the chosen shapes and dtypes."""
    import torch
    import triton

    from .. import device as _device
    from .. import registry
    from ..verify_matrix import run_matrix, shapes_named

    if args.presets is not None or args.tokens is not None:
        raise CommandError("--presets and --tokens do not apply to --matrix (use --shapes)")
    if args.jobs < 1:
        raise CommandError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        shapes = shapes_named(args.shapes, gpu)
    except ValueError as exc:
        raise CommandError(f"--shapes: {exc}") from None
    stems = None
    if args.variants:
        stems = [s for s in args.variants.split(",") if s]
        unknown = [s for s in stems if s not in registry.stems()]
        if unknown:
            raise CommandError(
                f"--variants: unknown stem(s) {', '.join(unknown)}; known: "
                f"{', '.join(registry.stems())}"
            )
    print(
        f"mhfgen verify --matrix on {where}: {len(shapes)} shapes x {len(names)} dtypes"
        + ("" if gpu else " (Triton interpreter: the Gluon variants are n/a)"),
        file=out,
    )
    start = time.perf_counter()

    def progress(done: int, total: int, group: str) -> None:
        print(
            f"[{done}/{total}] {group} done ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    rows = list(run_matrix(shapes, names, stems=stems, jobs=args.jobs, progress=progress))
    ran = [r for r in rows if r.status != "n/a"]
    failed = [r for r in ran if not r.ok]
    lines = []
    for r in ran:
        lines.append(
            (
                r.shape,
                r.batch,
                r.seqlen,
                r.form,
                r.dtype,
                r.variant,
                *(
                    f"{r.errors[o][0]:.1e}/{r.errors[o][1]:.1e}" if o in r.errors else ""
                    for o in OUTPUTS
                ),
                r.status,
            )
        )
    shown = [line for line in lines if not line[-1].startswith("ok")] if len(lines) > 60 else lines
    if shown:
        print(
            table(
                (
                    "shape",
                    "B",
                    "L",
                    "form",
                    "dtype",
                    "variant",
                    *(f"{o} tensor/row" for o in OUTPUTS),
                    "status",
                ),
                shown,
            ),
            file=out,
        )
    summary = {}
    for r in ran:
        key = (r.variant, r.dtype)
        ok, total = summary.get(key, (0, 0))
        summary[key] = (ok + r.ok, total + 1)
    print(
        table(
            ("variant", "dtype", "passed"),
            [(v, d, f"{ok} of {total}") for (v, d), (ok, total) in sorted(summary.items())],
        ),
        file=out,
    )
    skipped = sorted(
        {(r.variant, r.dtype, r.errors.get("reason", "")) for r in rows if r.status == "n/a"}
    )
    for variant, dtype, reason in skipped:
        print(f"n/a: {variant} {dtype}: {reason}", file=out)
    emit_json(
        args,
        {
            "format": VERIFY_FORMAT,
            "mode": "matrix",
            "gpu": where,
            "compute_capability": _device.compute_capability(dev),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "passed": len(ran) - len(failed),
            "failed": len(failed),
            "not_applicable": len(rows) - len(ran),
            "results": [r.as_dict() for r in rows],
        },
    )
    print(
        f"{len(ran) - len(failed)} of {len(ran)} passed ({len(rows) - len(ran)} n/a) in "
        f"{time.perf_counter() - start:.0f} s",
        file=out,
    )
    return 1 if failed else 0


def _reason(exc: BaseException) -> str:
    """One line naming why a row failed."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def _progress(args, line: tuple, done: int, total: int, start: float) -> None:
    """One row done, on stderr (the table follows on stdout): a status line overwritten
    on a terminal, else a line per row, so a log shows progress while kernels compile."""
    case, dtype, form, tokens, *_, status = line
    text = (
        f"[{done}/{total}] {case} {dtype} {form} {tokens}: {status} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)
