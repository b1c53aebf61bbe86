"""The reference comparison on one GPU, in one process: `python3 benchmarks/bench_h200.py OUTDIR`.

1. table: the 370M, 1.3B, 1.3B with 4 kv heads, H16D64 (1024, 16, 64, 2816, 11) and 128M (D = 96)
   shapes (--shapes picks some) at 16384 tokens (B=8, L=2048), bf16, forward and forward +
   backward: the mhfgen op, the PyTorch reference, torch.compile of it, the SwiGLU FFN of
   equal FLOPs; and the FlashMHF layer against the SwiGLU layer of the same d_model and
   intermediate size (--methods picks some of these). With --authors-kernel PATH (or
   MHFGEN_AUTHORS_KERNEL), also the paper authors' Triton kernel (mhfgen.peers.authors), a
   file you fetch from their repository. Where helion is installed, also the Helion forward
   (mhfgen.peers.helion_fwd) after Helion's autotuner, whose effort and per-shape time
   budget --helion-effort and --helion-budget set (its autotuning is not in BUDGET_S's
   reckoning: each shape takes up to the Helion budget more).
2. sweep: the 1.3B shape over tokens (the 16384-token rows of step 1 are reused), the core
   methods but Helion (whose static shapes would autotune again per token count), both
   passes, plotted as TFLOP/s against tokens.

Writes into OUTDIR: table.{txt,json,csv}, sweep.{txt,json,csv,png}, summary.md (the layout of
the reference table in docs/PERFORMANCE.md, with ratios) and progress.log (a line per
measurement, as it happens).
The sweep stops early (and says so) once the run has taken BUDGET_S seconds, so the whole
run stays near 6 minutes on an H200. Prints summary.md last.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mhfgen import bench
from mhfgen.peers import authors, helion_fwd
from mhfgen.presets import PRESETS

DTYPE = "bfloat16"
TOKENS = 16384
SWEEP_TOKENS = (2048, 4096, 8192, 32768)  # plus the 16384 of the table
BUDGET_S = 300
LAYER = bench.methods_of("layer")
#: the methods without a forward + backward to sweep, or whose static shapes would
#: autotune again at every token count
NOT_SWEPT = ("helion",)


def core_methods() -> list[str]:
    """The core methods that can run here (the authors' only once --authors-kernel named a
    file, so this is asked after the arguments are read)."""
    return bench.methods_of("core", available_only=True, default_only=True)


def shapes() -> dict[str, bench.BenchProblem]:
    out = {}
    for name in ("370M", "1.3B"):
        p = PRESETS[name]
        out[name] = bench.BenchProblem(
            p.heads, p.kv_heads or p.heads, p.head_dim, p.intermediate, p.experts, DTYPE, TOKENS
        )
    out["1.3B-kv4"] = bench.BenchProblem(16, 4, 128, 5632, 22, DTYPE, TOKENS)
    out["H16D64"] = bench.BenchProblem(16, 16, 64, 2816, 11, DTYPE, TOKENS)
    p = PRESETS["128M"]
    out["128M"] = bench.BenchProblem(
        p.heads, p.kv_heads or p.heads, p.head_dim, p.intermediate, p.experts, DTYPE, TOKENS
    )
    return out


def _cell(rows, shape, method, what="tflops"):
    """'fwd / fwdbwd' of a field for one shape and method at TOKENS."""
    vals = []
    for pass_ in bench.PASSES:
        r = next(
            (
                r
                for r in rows
                if r.shape == shape
                and r.method == method
                and r.pass_ == pass_
                and r.tokens == TOKENS
            ),
            None,
        )
        if r is None:
            vals.append("-")
        elif r.status == "unsupported":
            vals.append("n/a")
        elif r.status != "ok":
            vals.append(r.status.upper())
        else:
            v = getattr(r, what)
            vals.append("n/a" if v is None else f"{v:.0f}" if what == "tflops" else f"{v:.2f}")
    return " / ".join(vals)


def _peak(rows, shape, method, pass_="fwdbwd"):
    r = next(
        (
            r
            for r in rows
            if r.shape == shape and r.method == method and r.pass_ == pass_ and r.tokens == TOKENS
        ),
        None,
    )
    return "-" if r is None or r.peak_mib is None else f"{r.peak_mib:.0f} MiB"


def summary_markdown(rows: list[bench.Row], names: dict[str, str]) -> str:
    """The reference table's layout: TFLOP/s fwd / fwd+bwd and the fwd+bwd peak per method; then the
    ratios mhfgen/method (TFLOP/s, so above 1 means mhfgen is faster); then the layers."""
    r0 = rows[0]
    helion = any(r.method == "helion" for r in rows)
    theirs = any(r.method == "authors" for r in rows)
    lines = [
        f"GPU {r0.gpu} (cc {r0.compute_capability}), torch {r0.torch}, triton {r0.triton}, "
        f"mhfgen {r0.mhfgen}, {r0.date}, {DTYPE}, {TOKENS} tokens (B=8, L=2048).",
        "",
        bench.FLOP_NOTE,
        "",
        "TFLOP/s forward / forward + backward, peak MiB of forward + backward above the inputs:",
        "",
        "| shape (d, H, D, I, E) | mhfgen |"
        + (" authors' kernel |" if theirs else "")
        + " PyTorch naive | torch.compile of naive | SwiGLU FFN (cuBLAS) |"
        + (" Helion, autotuned (forward only; its peak) |" if helion else ""),
        "|---|---|---|---|---|" + ("---|" if theirs else "") + ("---|" if helion else ""),
    ]
    core = (
        ["mhfgen"]
        + (["authors"] if theirs else [])
        + ["torch", "torch_compile", "swiglu"]
        + (["helion"] if helion else [])
    )
    for name, p in names.items():
        cells = [
            f"{_cell(rows, p, m)}, {_peak(rows, p, m, 'fwd' if m == 'helion' else 'fwdbwd')}"
            for m in core
        ]
        label = name if name == p else f"{name} {p}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "mhfgen's speed over each method (method ms / mhfgen ms), forward / forward + backward:",
        "",
        "| shape |"
        + (" vs the authors' kernel |" if theirs else "")
        + " vs naive | vs torch.compile | vs SwiGLU FFN |"
        + (" vs Helion (forward) |" if helion else ""),
        "|---|---|---|---|" + ("---|" if theirs else "") + ("---|" if helion else ""),
    ]
    for name, p in names.items():
        cells = [_cell(rows, p, m, "time_vs_mhfgen") for m in core[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Whole layers, same d_model and intermediate size (TFLOP/s fwd / fwd+bwd; "
        "the FlashMHF layer's count includes its 4*T*d^2 projections):",
        "",
        "| shape | FlashMHF layer (mhfgen) | SwiGLU layer | SwiGLU time / FlashMHF time |",
        "|---|---|---|---|",
    ]
    for name, p in names.items():
        lines.append(
            f"| {name} | {_cell(rows, p, 'layer_mhfgen')}, {_peak(rows, p, 'layer_mhfgen')} "
            f"| {_cell(rows, p, 'layer_swiglu')}, {_peak(rows, p, 'layer_swiglu')} "
            f"| {_cell(rows, p, 'layer_swiglu', 'time_vs_mhfgen')} |"
        )
    bad = [r for r in rows if r.status != "ok"]
    if bad:
        lines += ["", "Rows that did not run:"]
        lines += [
            f"- {r.shape} {r.tokens} {r.pass_} {r.method}: {r.status}: {r.error}" for r in bad
        ]
    return "\n".join(lines) + "\n"


def sweep_1p3b(table, core: list[str], out: Path, args, start: float, progress) -> str:
    """Step 2: the 1.3B shape over SWEEP_TOKENS (its TOKENS rows taken from `table`), the
    core methods but NOT_SWEPT, until the run has taken args.budget_s seconds since
    `start`; writes sweep.{txt,json,csv,png} and returns the note for summary.md (''
    when every point ran and the plot was drawn)."""
    big = shapes()["1.3B"]
    methods = [m for m in core if m not in NOT_SWEPT]
    sweep = [r for r in table if r.shape == big.shape and r.scope == "core"]
    skipped = []
    for tokens in SWEEP_TOKENS:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(tokens)
            continue
        sweep += bench.run_benchmarks(
            [big.with_tokens(tokens)], methods, bench.PASSES, on_row=progress
        )
    sweep.sort(key=lambda r: (r.tokens, bench.PASSES.index(r.pass_), core.index(r.method)))
    note = (
        f"\nsweep: skipped tokens {skipped} (over the {args.budget_s:.0f} s budget)\n"
        if skipped
        else ""
    )
    (out / "sweep.txt").write_text(bench.format_table(sweep) + "\n" + note)
    bench.write_json(sweep, out / "sweep.json")
    bench.write_csv(sweep, out / "sweep.csv")
    try:
        bench.plot(sweep, out / "sweep.png")
    except ImportError as exc:
        note += f"\nno plot: {exc}\n"
    return note


def main() -> int:
    known = shapes()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", help="directory for the JSON, CSV, PNG and text outputs")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=BUDGET_S,
        help=f"start no sweep point after this many seconds (default {BUDGET_S})",
    )
    ap.add_argument(
        "--shapes",
        default=",".join(known),
        help=f"comma list of the shapes to run (default: all of {', '.join(known)})",
    )
    ap.add_argument(
        "--methods",
        default=None,
        help="comma list of the core and layer methods to run (default: every one that can "
        "run here; mhfgen always runs, the ratios are taken against it)",
    )
    ap.add_argument(
        "--authors-kernel",
        metavar="PATH",
        default=None,
        help=f"the paper authors' Triton kernel file ({authors.SOURCE}), fetched by you "
        f"(default: ${authors.ENV_VAR})",
    )
    ap.add_argument(
        "--helion-effort",
        choices=helion_fwd.EFFORTS,
        default=helion_fwd.AutotuneSettings.effort,
        help="Helion's autotune effort, where helion is installed",
    )
    ap.add_argument(
        "--helion-budget",
        type=int,
        default=helion_fwd.AutotuneSettings.budget_s,
        metavar="SECONDS",
        help="Helion's autotune budget per shape",
    )
    args = ap.parse_args()
    helion_fwd.configure(helion_fwd.AutotuneSettings(args.helion_effort, args.helion_budget))
    if args.authors_kernel is not None:
        if not Path(args.authors_kernel).is_file():
            ap.error(f"--authors-kernel: no file {args.authors_kernel!r}")
        authors.configure(args.authors_kernel)
    if not torch.cuda.is_available():
        print("bench_h200: needs a CUDA GPU", file=sys.stderr)
        return 2
    chosen = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        ap.error(f"--shapes: unknown {unknown}; known: {', '.join(known)}")
    problems = {name: p for name, p in known.items() if name in chosen}
    core, layer = core_methods(), LAYER
    if args.methods is not None:
        wanted = {m.strip() for m in args.methods.split(",") if m.strip()} | {"mhfgen"}
        bad = sorted(wanted - set(core) - set(layer))
        if bad:
            ap.error(f"--methods: {bad} cannot run here; available: {', '.join(core + layer)}")
        core = [m for m in core if m in wanted]
        layer = [m for m in layer if m in wanted]
    if "authors" in core:
        print(f"bench_h200: the authors' kernel from {authors.kernel_path()}", file=sys.stderr)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = open(out / "progress.log", "w", buffering=1)

    def progress(row, index, total):
        line = f"[{time.perf_counter() - start:6.1f}s {index}/{total}] {bench.format_row_line(row)}"
        print(line, file=sys.stderr, flush=True)
        log.write(line + "\n")

    names = {name: p.shape for name, p in problems.items()}
    table = bench.run_benchmarks(problems.values(), core + layer, bench.PASSES, on_row=progress)
    (out / "table.txt").write_text(bench.format_table(table) + "\n")
    bench.write_json(table, out / "table.json")
    bench.write_csv(table, out / "table.csv")
    summary = summary_markdown(table, names)
    tunings = helion_fwd.describe_tunings()
    if tunings:
        summary += "\nHelion's autotuner:\n\n" + "".join(f"- {t}\n" for t in tunings)
    (out / "summary.md").write_text(summary)

    if "1.3B" in problems:
        note = sweep_1p3b(table, core, out, args, start, progress)
    else:
        note = "\nsweep: not run (it sweeps the 1.3B shape, which --shapes left out)\n"
    if note:
        with open(out / "summary.md", "a") as f:
            f.write(note)
        summary += note
    log.close()
    print(bench.format_table(table))
    print()
    print(summary)
    print(
        f"bench_h200: {time.perf_counter() - start:.0f} s; wrote {', '.join(sorted(p.name for p in out.iterdir()))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
