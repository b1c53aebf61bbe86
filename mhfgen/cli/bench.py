"""`mhfgen bench`: the mhfgen op against the PyTorch reference, torch.compile of it, a
SwiGLU FFN of equal FLOPs, and where they can run the paper authors' kernel and a Helion
forward (and the FlashMHF layer against the SwiGLU layer), side by side."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from . import CommandError
from .common import add_command, add_problem_args, spec_from_args, tokens_flag

#: FLOPs per pass above which the CPU fallback refuses (the interpreter would take hours)
CPU_MAX_FLOPS = 2e9
EXAMPLES = """\
examples:
  mhfgen bench --preset 1.3B --tokens 16384 --layer
  mhfgen bench --preset 370M --tokens 2048,8192,16384 --json out.json --csv out.csv --plot out.png
  mhfgen bench --preset 1.3B --passes fwd --methods mhfgen,helion --helion-effort full \
               --helion-budget 300                       # needs helion (GPU)
  mhfgen bench --preset 1.3B --authors-kernel flash_mlp_moe.py   # + the authors' kernel (GPU)
  mhfgen bench --heads 2 --head-dim 32 --intermediate 64 --experts 2 --tokens 64 \\
               --dtype float32 --methods mhfgen,torch     # without a GPU: the interpreter
  mhfgen bench --preset 1.3B --methods mhfgen,mhfgen_fp8 --passes fwd   # FP8 weights, prefill
  mhfgen bench --suite decode --preset 1.3B --json decode.json  # 1-64 tokens, CUDA graphs
"""
#: --tokens when not given, per suite
DEFAULT_TOKENS = {"ops": "16384", "decode": "1,2,4,8,16,32,64"}


def register(sub) -> None:
    from ..bench import FLOP_NOTE, METHODS, methods_of
    from ..peers.authors import ENV_VAR as AUTHORS_ENV
    from ..peers.authors import SOURCE as AUTHORS_SOURCE
    from ..peers.helion_fwd import EFFORTS, AutotuneSettings

    method_help = "; ".join(f"{name}: {m.description}" for name, m in METHODS.items())
    p = add_command(
        sub,
        "bench",
        run,
        help="time and peak memory against the reference, torch.compile and SwiGLU",
        description=textwrap.fill(
            "For a problem and each pass (forward; forward + backward), measure the "
            "median time, TFLOP/s and peak memory of the mhfgen op, the PyTorch "
            "reference, torch.compile of the reference and a SwiGLU FFN of equal "
            "FLOPs (and, where they can run, the paper authors' Triton kernel from a "
            "file you fetched, and a Helion forward after Helion's autotuner), side by "
            "side in one run, with ratios against mhfgen. "
            + FLOP_NOTE
            + " Without a GPU, tiny problems run through Triton's interpreter and "
            "the timings are labelled as such.",
            88,
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        conflict_handler="resolve",
    )  # NOTE: replaces add_problem_args' int --tokens by a list
    add_problem_args(p)
    p.add_argument(
        "--suite",
        choices=tuple(DEFAULT_TOKENS),
        default="ops",
        help="ops: the methods side by side (default); decode: the forward at 1-64 tokens "
        "in CUDA graphs as a share of the copy bandwidth, with 16-bit and FP8 weights "
        "(GPU only; --weights)",
    )
    p.add_argument(
        "--tokens",
        default=None,
        metavar="N[,N...]",
        help="tokens B*L, or a comma list for a sweep (default 16384; decode suite "
        "1,2,4,8,16,32,64); B = tokens / 2048 when 2048 divides tokens, else B = 1",
    )
    p.add_argument(
        "--weights",
        default="dense,fp8",
        help="decode suite: comma list of dense (q's dtype) and fp8 (e4m3, a scale per "
        "row) expert weights (default dense,fp8)",
    )
    p.add_argument(
        "--passes",
        default="fwd,fwdbwd",
        help="comma list of fwd (forward) and fwdbwd (forward + backward)",
    )
    # NOTE: the default is resolved when the command runs: whether helion imports is
    # not asked while every command's parser is built
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma list of methods (default: those of "
        f"{','.join(methods_of('core', default_only=True))} that can run here; helion only on a "
        "GPU where it is installed). " + method_help,
    )
    p.add_argument(
        "--layer",
        action="store_true",
        help="also bench the whole FlashMHF layer against the SwiGLU layer "
        "(methods " + ",".join(methods_of("layer")) + ")",
    )
    p.add_argument(
        "--helion-effort",
        choices=EFFORTS,
        default=AutotuneSettings.effort,
        help="Helion's autotune effort for the helion method; none: Helion's default "
        f"config, no search (default {AutotuneSettings.effort})",
    )
    p.add_argument(
        "--helion-budget",
        type=int,
        default=AutotuneSettings.budget_s,
        metavar="SECONDS",
        help="time budget of Helion's autotuner per shape; it returns its best "
        f"config so far then (default {AutotuneSettings.budget_s})",
    )
    p.add_argument(
        "--authors-kernel",
        metavar="PATH",
        default=None,
        help="the paper authors' Triton kernel file (" + AUTHORS_SOURCE + "), fetched by "
        "you: adds the method authors to the default methods (default: $" + AUTHORS_ENV + ")",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timings per row, the row reports their median (default 3); on a GPU "
        "each is a do_bench median over ~100 ms of runs",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="write the rows as JSON")
    p.add_argument("--csv", metavar="FILE", default=None, help="write the rows as CSV")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="write a PNG of TFLOP/s against tokens, one line per method and pass "
        "(needs matplotlib)",
    )


def _comma_list(flag: str, text: str, known) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise CommandError(f"{flag}: expected a comma list of {', '.join(known)}, got {text!r}")
    for item in items:
        if item not in known:
            raise CommandError(
                f"{flag}: unknown {item!r}; expected a comma list of {', '.join(known)}"
            )
    return list(dict.fromkeys(items))


def parse_tokens(text: str) -> list[int]:
    """'2048,8192' -> [2048, 8192]; CommandError for anything but positive integers."""
    out = []
    for item in str(text).split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise CommandError(
                f"--tokens: expected positive integers separated by commas, got {text!r}"
            ) from None
        out.append(tokens_flag(value))
    return sorted(dict.fromkeys(out))


def _output_path(flag: str, path: str | None, suffix: str | None = None) -> Path | None:
    if path is None:
        return None
    out = Path(path)
    if suffix and out.suffix.lower() != suffix:
        raise CommandError(f"{flag}: expected a {suffix} file name, got {path!r}")
    if not out.parent.is_dir():
        raise CommandError(f"{flag}: directory {str(out.parent)!r} does not exist")
    return out


def run(args) -> int:
    import torch

    from .. import bench
    from ..validation import check_layer_sizes

    tokens = parse_tokens(args.tokens or DEFAULT_TOKENS[args.suite])
    if args.suite == "decode":
        return _run_decode(args, tokens)
    passes = _comma_list("--passes", args.passes, bench.PASSES)
    from ..peers import authors, helion_fwd

    if args.authors_kernel is not None:
        if not Path(args.authors_kernel).is_file():
            raise CommandError(f"--authors-kernel: no file {args.authors_kernel!r}")
        authors.configure(args.authors_kernel)
    if args.methods is None:
        methods = bench.methods_of("core", available_only=True, default_only=True)
    else:
        methods = _comma_list("--methods", args.methods, list(bench.METHODS))
    for name in methods:
        reason = bench.METHODS[name].unavailable()
        if reason:
            raise CommandError(f"--methods: {name} cannot run here: {reason}")
    try:
        helion_fwd.configure(helion_fwd.AutotuneSettings(args.helion_effort, args.helion_budget))
    except ValueError as exc:
        raise CommandError(f"--helion-budget: {exc}") from None
    if args.layer:
        methods += [m for m in bench.methods_of("layer") if m not in methods]
    if args.repeat < 1:
        raise CommandError(f"--repeat must be >= 1, got {args.repeat}")
    json_path = _output_path("--json", args.json)
    csv_path = _output_path("--csv", args.csv)
    plot_path = _output_path("--plot", args.plot, ".png")
    if plot_path is not None:
        try:
            bench.require_matplotlib()
        except ImportError as exc:
            raise CommandError(str(exc)) from None

    ns = argparse.Namespace(**{**vars(args), "tokens": tokens[0]})
    spec = spec_from_args(ns)  # validates sizes and dtype (CommandError)
    if any(bench.METHODS[m].scope == "layer" for m in methods):
        try:
            check_layer_sizes(
                spec.heads * spec.head_dim,
                spec.heads,
                spec.intermediate,
                spec.experts,
                spec.kv_heads,
            )
        except ValueError as exc:
            raise CommandError(f"layer: {exc}") from None
    if spec.fp8_weights:
        raise CommandError(
            f"--dtype {args.dtype}: FP8 weights are benchmarked as the method mhfgen_fp8 "
            f"(--dtype {spec.activation_dtype} --methods mhfgen,mhfgen_fp8 --passes fwd) and "
            "by the decode suite (--suite decode)"
        )
    problems = [
        bench.BenchProblem(
            spec.heads, spec.kv_heads, spec.head_dim, spec.intermediate, spec.experts, spec.dtype, t
        )
        for t in tokens
    ]

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        if spec.dtype == "bfloat16":
            raise CommandError(
                "bfloat16 needs a GPU: Triton's interpreter cannot multiply bf16; "
                "pass --dtype float32 (or float16) for CPU/interpreter timings"
            )
        biggest = max(bench.pass_flops(bench.layer_flops(p), "fwdbwd") for p in problems)
        if biggest > CPU_MAX_FLOPS:
            raise CommandError(
                f"no CUDA GPU: the CPU/interpreter fallback is for tiny problems (at most "
                f"{CPU_MAX_FLOPS:.0e} FLOPs per pass, this one needs {biggest:.1e}); try "
                f"--heads 2 --head-dim 32 --intermediate 64 --experts 2 --tokens 64 --dtype float32"
            )
        print(f"mhfgen bench: no CUDA GPU, {bench.CPU_LABEL}", file=sys.stderr)

    def progress(row, index, total):
        print(f"[{index}/{total}] {bench.format_row_line(row)}", file=sys.stderr, flush=True)

    rows = bench.run_benchmarks(
        problems, methods, passes, device, repeat=args.repeat, on_row=progress
    )
    print(bench.format_table(rows))
    for line in helion_fwd.describe_tunings():
        print(line, file=sys.stderr)
    if json_path:
        bench.write_json(rows, json_path)
    if csv_path:
        bench.write_csv(rows, csv_path)
    if plot_path:
        bench.plot(rows, plot_path)
    for path in (json_path, csv_path, plot_path):
        if path:
            print(f"wrote {path}", file=sys.stderr)
    bad = [r for r in rows if r.status != "ok"]
    if bad:
        print(
            f"mhfgen bench: {len(bad)} of {len(rows)} rows did not run (status "
            f"unsupported/oom/failed; see the error column)",
            file=sys.stderr,
        )
    return 0


def _run_decode(args, tokens: list[int]) -> int:
    """The decode suite (mhfgen.bench_decode): a table, and the rows as JSON with --json."""
    import json

    import torch

    from .. import bench, bench_decode

    weights = _comma_list("--weights", args.weights, bench_decode.WEIGHTS)
    ns = argparse.Namespace(**{**vars(args), "tokens": tokens[0]})
    spec = spec_from_args(ns)
    if spec.fp8_weights or spec.dtype == "float32":
        raise CommandError(
            f"--dtype {args.dtype}: the decode suite takes bfloat16 or float16 (the "
            "activations' dtype; --weights chooses the weights')"
        )
    if not torch.cuda.is_available():
        raise CommandError("the decode suite needs a CUDA GPU (it times CUDA graphs)")
    json_path = _output_path("--json", args.json)
    device = torch.device("cuda")
    copy_bps = bench_decode.copy_bandwidth(device)
    env = bench.environment(device, bench.default_timer(device))
    name = args.preset or spec.key()
    print(
        f"decode suite: {name}, {spec.dtype} activations, on {env['gpu']}, torch "
        f"{env['torch']}, triton {env['triton']}, {env['date']}; copy bandwidth "
        f"{copy_bps / 1e12:.2f} TB/s (read + write)",
        file=sys.stderr,
    )
    print(bench_decode.HEADER)

    def progress(row):
        print(bench_decode.format_row(row), flush=True)

    rows = bench_decode.run_decode(name, spec, tokens, weights, device, copy_bps, progress)
    if json_path:
        doc = dict(
            suite="decode",
            environment=env,
            copy_tb_per_s=round(copy_bps / 1e12, 3),
            rows=[row.__dict__ for row in rows],
        )
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
