"""Render the tables of docs/PERFORMANCE.md from benchmarks/results/*.json.

The results files are the machine-readable home of the measured figures: one file per GPU
model, benchmarks/results/<gpu>.json ('h200' for "NVIDIA H200"), in this format:

    {
      "format": "mhfgen-results/1",
      "gpu": "NVIDIA H200",                 # as the driver names it
      "machine": "132 SMs, driver ...",     # optional: what else a reader needs to compare
      "tables": {
        "<id>": {
          "title": "...",                   # one line above the table
          "torch": "2.11.0+cu130", "triton": "3.6.0",
          "date": "2026-12-02",             # the UTC day of the measurement
          "command": "python3 benchmarks/...",  # the reusable command that measures it
          "row_label": "shape",             # the first column's heading
          "ratio": "...",                   # optional: what a row's ratio is
          "rows": [
            {"row": "370M", "metric": "mhfgen fwd+bwd", "value": 361, "unit": "TFLOP/s",
             "ratio": 1.58}                 # ratio optional
          ]
        }
      }
    }

A table renders as one line per distinct `row` and one column per distinct `metric` (in
the order they first appear), each cell the value, with "(ratio x)" after it where the
row has a ratio. In docs/PERFORMANCE.md a table's place is marked by

    <!-- results h200 comparison -->
    ... (rendered; do not edit by hand)
    <!-- /results -->

and this script rewrites what lies between the markers. tests/test_performance_doc.py
checks that the document matches the results files.

    python3 benchmarks/render_performance.py            # rewrite docs/PERFORMANCE.md
    python3 benchmarks/render_performance.py --check    # exit 1 if the doc is stale
    python3 -m mhfgen bench --preset 1.3B --json OUT/bench.json
    python3 benchmarks/render_performance.py --add-bench OUT/bench.json --table bench-1.3B
        # a table of `mhfgen bench` rows (TFLOP/s; ratio: method time / mhfgen time) into
        # the results file of the GPU that measured them; then render (no --check)
    python3 benchmarks/bench_h200.py OUT
    python3 benchmarks/render_performance.py --add-compare OUT/table.csv
        # that run's tables 'comparison' (the core op against the other methods) and
        # 'layers' (the FlashMHF layer against the SwiGLU layer) into its GPU's file
    python3 benchmarks/render_performance.py --add-compare OUT2/table.csv \
        --compare-name comparison-helion
        # a second run (e.g. Helion at full effort) as table 'comparison-helion' beside
        # them (its core rows only)
    python3 examples/train_lm.py --ffn both --out OUT/lm
    python3 examples/train_lm.py --ffn both --no-cuda-graph --out OUT/lm_eager
    python3 benchmarks/render_performance.py --add-train-lm OUT/lm/summaries.json \
        OUT/lm_eager/summaries.json
        # table 'train-lm': each run's models (tokens/s, ratio: FlashMHF's over SwiGLU's
        # in the same run), peak memory and final validation loss
    python3 benchmarks/bwd_ws_check.py --variant flash_mhf_bwdt_ws --json OUT/bwdt.json
    python3 benchmarks/render_performance.py --add-tables OUT/bwdt.json
        # a results fragment (this format: one GPU, its new tables) into its GPU's file
    python3 benchmarks/fp8_fwd_check.py --skip-verify --skip-timing --pdl --json OUT/pdl.json
    python3 benchmarks/render_performance.py --add-pdl OUT/pdl.json
        # table 'decode-pdl': the decode forward with and without programmatic dependent
        # launch, back to back, after a GEMM and after the router (us per call)
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "PERFORMANCE.md"
FORMAT = "mhfgen-results/1"
TABLE_KEYS = ("title", "torch", "triton", "date", "command", "row_label", "rows")
ROW_KEYS = ("row", "metric", "value", "unit")
SECTION = re.compile(r"(<!-- results (\S+) (\S+) -->\n)(.*?)(<!-- /results -->)", re.S)


class ResultsError(ValueError):
    """A results file or a marked section that does not follow the format."""


def gpu_slug(gpu: str) -> str:
    """The results file's name for a GPU: 'NVIDIA H200' -> 'h200'."""
    name = re.sub(r"^nvidia\s+", "", gpu.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def load(folder: Path = RESULTS) -> dict[str, dict]:
    """Every results file of `folder`, by file stem, checked against the format."""
    docs = {}
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        check(doc, path.name)
        docs[path.stem] = doc
    return docs


def check(doc: dict, where: str) -> None:
    if doc.get("format") != FORMAT:
        raise ResultsError(f"{where}: format must be {FORMAT!r}, got {doc.get('format')!r}")
    if not isinstance(doc.get("gpu"), str) or not isinstance(doc.get("tables"), dict):
        raise ResultsError(f"{where}: needs 'gpu' (a string) and 'tables' (an object)")
    for name, table in doc["tables"].items():
        missing = [k for k in TABLE_KEYS if k not in table]
        if missing:
            raise ResultsError(f"{where}: table {name!r} lacks {', '.join(missing)}")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", table["date"]):
            raise ResultsError(f"{where}: table {name!r}: date must be YYYY-MM-DD")
        for i, row in enumerate(table["rows"]):
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ResultsError(f"{where}: table {name!r} row {i} lacks {', '.join(missing)}")
            for key in ("value", "ratio"):
                value = row.get(key)
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))
                ):
                    raise ResultsError(f"{where}: table {name!r} row {i}: {key} must be a number")


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.partition(".")[2]) if isinstance(value, float) and "e" not in text else 0


def _number(value: float, decimals: int) -> str:
    """JSON drops trailing zeros (1.270 reads 1.27): a column shows every value with the
    decimals of its most precise one."""
    return f"{value:.{decimals}f}" if isinstance(value, float) else str(value)


def render_table(doc: dict, name: str) -> str:
    """The Markdown of one table: a line naming the GPU, versions, date and command, then
    the table (rows by `row`, columns by `metric`)."""
    table = doc["tables"][name]
    labels, metrics, units, cells, decimals = [], [], {}, {}, {}
    for r in table["rows"]:
        for key in ("value", "ratio"):
            if r.get(key) is not None:
                column = (r["metric"], r["unit"], key)
                decimals[column] = max(decimals.get(column, 0), _decimals(r[key]))
    for r in table["rows"]:
        if r["row"] not in labels:
            labels.append(r["row"])
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
            units[r["metric"]] = r["unit"]
        text = _number(r["value"], decimals[r["metric"], r["unit"], "value"])
        if r["unit"] != units[r["metric"]]:
            text += r["unit"] if r["unit"] == "x" else f" {r['unit']}"
        if r.get("ratio") is not None:
            text += f" ({_number(r['ratio'], decimals[r['metric'], r['unit'], 'ratio'])}x)"
        cells[r["row"], r["metric"]] = text
    lines = [
        f"**{table['title']}** {doc['gpu']}, torch {table['torch']}, Triton "
        f"{table['triton']}, measured {table['date']}. Reproduce: `{table['command']}`.",
        "",
    ]
    if table.get("ratio"):
        lines[0] += f" In brackets: {table['ratio']}."
    head = [table["row_label"]] + [f"{m} ({units[m]})" if units[m] else m for m in metrics]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for label in labels:
        lines.append(
            "| " + " | ".join([label] + [cells.get((label, m), "-") for m in metrics]) + " |"
        )
    return "\n".join(lines) + "\n"


def render(text: str, docs: dict[str, dict]) -> str:
    """`text` with every marked section replaced by its table."""

    def replace(match: re.Match) -> str:
        slug, name = match.group(2), match.group(3)
        if slug not in docs or name not in docs[slug]["tables"]:
            raise ResultsError(
                f"marked section {slug} {name}: no such table in benchmarks/results/{slug}.json"
            )
        return match.group(1) + render_table(docs[slug], name) + match.group(5)

    return SECTION.sub(replace, text)


def measured_rows(rows: list[dict], what: str) -> list[dict]:
    """The rows of an `mhfgen bench` run (its JSON, or a CSV's strings) that measured
    something: status 'ok' and a TFLOP/s figure. ResultsError where none did, or where
    they come from more than one GPU or torch/Triton version (`what` names the run)."""
    rows = [r for r in rows if r["status"] == "ok" and r["tflops"] not in (None, "")]
    if not rows:
        raise ResultsError(f"the {what} document has no measured rows")
    if len({(r["gpu"], r["torch"], r["triton"]) for r in rows}) > 1:
        raise ResultsError(f"the {what} rows come from more than one GPU or version")
    return rows


def bench_table(bench_doc: dict, command: str) -> tuple[str, dict]:
    """(GPU, a results table) from an `mhfgen bench --json` document (mhfgen-bench/1):
    one row per problem shape, one column per method and pass, TFLOP/s with the time
    ratio against mhfgen's."""
    if bench_doc.get("format") != "mhfgen-bench/1":
        raise ResultsError(f"expected an mhfgen-bench/1 document, got {bench_doc.get('format')!r}")
    rows = measured_rows(bench_doc["rows"], "bench")
    first = rows[0]
    table = {
        "title": f"`mhfgen bench`, {first['dtype']}, TFLOP/s per method and pass.",
        "torch": first["torch"],
        "triton": first["triton"],
        "date": first["date"][:10],
        "command": command,
        "row_label": "shape (d, H, D, I, E), tokens",
        "ratio": "the method's time over mhfgen's (above 1: mhfgen is faster)",
        "rows": [
            {
                "row": f"{r['shape']}, {r['tokens']}",
                "metric": f"{r['method']} {r['pass']}",
                "value": round(r["tflops"]),
                "unit": "TFLOP/s",
                "ratio": None
                if r["method"] in ("mhfgen", "layer_mhfgen") or r["time_vs_mhfgen"] is None
                else round(r["time_vs_mhfgen"], 2),
            }
            for r in rows
        ],
    }
    return first["gpu"], table


def decode_table(decode_doc: dict, command: str) -> tuple[str, dict]:
    """(GPU, a results table) from an `mhfgen bench --suite decode --json` document: one
    row per (shape, tokens), per weight format the time per call and its share of the
    copy bandwidth, and the FP8 row's speed-up over the dense one."""
    if decode_doc.get("suite") != "decode":
        raise ResultsError("expected an `mhfgen bench --suite decode` document")
    env, rows = decode_doc["environment"], decode_doc["rows"]
    if not rows:
        raise ResultsError("the decode document has no rows")
    out = []
    for r in rows:
        label = f"{r['shape']}, {r['tokens']}"
        out.append({"row": label, "metric": f"{r['weights']}", "value": r["us"], "unit": "us"})
        share = round(100 * r["of_copy"], 1)
        out.append(
            {"row": label, "metric": f"{r['weights']}, of copy", "value": share, "unit": "%"}
        )
        if r.get("speedup") is not None:
            out.append(
                {
                    "row": label,
                    "metric": f"{r['weights']} speed-up",
                    "value": r["speedup"],
                    "unit": "x",
                }
            )
    table = {
        "title": (
            "Decode: the forward at a few tokens in CUDA graphs, each call on its own copy of "
            f"the weights; copy bandwidth {decode_doc['copy_tb_per_s']:.2f} TB/s in the same run."
        ),
        "torch": env["torch"],
        "triton": env["triton"],
        "date": env["date"][:10],
        "command": command,
        "row_label": "shape, tokens",
        "rows": out,
    }
    return env["gpu"], table


def add_bench(bench_path: Path, name: str, folder: Path = RESULTS) -> Path:
    """Write (or replace) table `name` of the GPU's results file from an mhfgen bench run
    (the ops suite's or the decode suite's JSON)."""
    bench_doc = json.loads(bench_path.read_text())
    command = f"python3 -m mhfgen bench ... --json {bench_path.name}"
    if bench_doc.get("suite") == "decode":
        command = f"python3 -m mhfgen bench --suite decode ... --json {bench_path.name}"
        gpu, table = decode_table(bench_doc, command)
    else:
        gpu, table = bench_table(bench_doc, command)
    return _write_tables(gpu, {name: table}, folder)


#: shape labels of the comparison tables: (d, H, D, I, E) -> the name PERFORMANCE.md uses
SHAPE_NAMES = {
    "(768, 8, 96, 2048, 8)": "128M",
    "(1024, 8, 128, 2816, 11)": "370M",
    "(2048, 16, 128, 5632, 22)": "1.3B",
    "(2048, 16, 128, 5632, 22, Hkv=4)": "1.3B, 4 kv heads",
    "(1024, 16, 64, 2816, 11)": "H16 D64",
}
#: (bench method, the comparison table's name for it)
COMPARE_METHODS = (
    ("authors", "authors' kernel"),
    ("torch", "naive PyTorch"),
    ("torch_compile", "torch.compile"),
    ("swiglu", "SwiGLU FFN"),
    ("helion", "Helion"),
)


#: the methods whose forward the comparison shows beside their forward + backward (the
#: others' forwards are in the run's table.csv)
FORWARD_TOO = ("authors", "helion")


def compare_tables(rows: list[dict], command: str) -> tuple[str, dict[str, dict]]:
    """(GPU, {'comparison': ..., 'layers': ...}) from the rows of one
    benchmarks/bench_h200.py run (its table.csv or table.json): per shape, mhfgen's forward
    and forward + backward TFLOP/s and peak, each other method's forward + backward with its
    time over mhfgen's; and the FlashMHF layer against the SwiGLU layer."""
    rows = measured_rows(rows, "comparison")
    first = rows[0]

    def find(shape, method, pass_):
        return next(
            (r for r in rows if (r["shape"], r["method"], r["pass"]) == (shape, method, pass_)),
            None,
        )

    def cell(row, metric, r, unit="TFLOP/s", key="tflops", ratio_of=None):
        out = {"row": row, "metric": metric, "value": round(float(r[key])), "unit": unit}
        if ratio_of is not None:
            out["ratio"] = round(float(r["median_ms"]) / float(ratio_of["median_ms"]), 2)
        return out

    core, layers = [], []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        name = SHAPE_NAMES.get(shape, shape)
        mine = {p: find(shape, "mhfgen", p) for p in ("fwd", "fwdbwd")}
        if all(mine.values()):
            core += [
                cell(name, "mhfgen fwd", mine["fwd"]),
                cell(name, "mhfgen fwd+bwd", mine["fwdbwd"]),
                cell(name, "mhfgen fwd+bwd peak", mine["fwdbwd"], "MiB", "peak_mib"),
            ]
            for method, label in COMPARE_METHODS:
                for pass_, what in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
                    other = find(shape, method, pass_)
                    if other is not None and (pass_ == "fwdbwd" or method in FORWARD_TOO):
                        core.append(cell(name, f"{label} {what}", other, ratio_of=mine[pass_]))
        lay = {
            (m, p): find(shape, m, p)
            for m in ("layer_mhfgen", "layer_swiglu")
            for p in ("fwd", "fwdbwd")
        }
        if all(lay.values()):
            mhf, swi = "layer_mhfgen", "layer_swiglu"
            layers += [
                cell(name, "FlashMHF layer fwd", lay[(mhf, "fwd")]),
                cell(name, "FlashMHF layer fwd+bwd", lay[(mhf, "fwdbwd")]),
                cell(name, "FlashMHF layer peak", lay[(mhf, "fwdbwd")], "MiB", "peak_mib"),
                cell(name, "SwiGLU layer fwd", lay[(swi, "fwd")], ratio_of=lay[(mhf, "fwd")]),
                cell(
                    name,
                    "SwiGLU layer fwd+bwd",
                    lay[(swi, "fwdbwd")],
                    ratio_of=lay[(mhf, "fwdbwd")],
                ),
                cell(name, "SwiGLU layer peak", lay[(swi, "fwdbwd")], "MiB", "peak_mib"),
            ]
    common = {"torch": first["torch"], "triton": first["triton"], "date": first["date"][:10]}
    common |= {"command": command, "row_label": "shape"}
    tables = {
        "comparison": {
            "title": "The core op against the other implementations, one process.",
            **common,
            "ratio": "the method's time over mhfgen's in the same pass (above 1: mhfgen is faster)",
            "rows": core,
        },
        "layers": {
            "title": "The whole FlashMHF layer against the SwiGLU layer of the same d_model "
            "and intermediate size, same run.",
            **common,
            "ratio": "the SwiGLU layer's time over the FlashMHF layer's",
            "rows": layers,
        },
    }
    return first["gpu"], {k: t for k, t in tables.items() if t["rows"]}


def add_compare(
    path: Path, folder: Path = RESULTS, name: str = "comparison", command: str | None = None
) -> Path:
    """Write (or replace) tables 'comparison' and 'layers' of the GPU's results file from a
    benchmarks/bench_h200.py run's table.csv or table.json; with another `name`, table
    NAME only (a second run beside the first, e.g. of another method: its layer rows
    repeat the first run's). `command`: the run's command line as the tables cite it
    (default: bench_h200.py with the --authors-kernel it took where the authors' kernel
    ran)."""
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = json.loads(path.read_text())
        rows = rows["rows"] if isinstance(rows, dict) else rows
    if command is None:
        command = "python3 benchmarks/bench_h200.py OUT"
        if any(r.get("method") == "authors" for r in rows):
            command += " --authors-kernel flash_mlp_moe.py"
    gpu, tables = compare_tables(rows, command)
    if name != "comparison":
        if "comparison" not in tables:
            raise ValueError(f"{path}: no shape with mhfgen's forward and forward + backward")
        tables = {name: tables["comparison"]}
    return _write_tables(gpu, tables, folder)


#: train_lm's FFN kinds -> the table's names for them
TRAIN_LM_FFNS = {"flashmhf": "FlashMHF", "swiglu": "SwiGLU (matched parameters)"}


def train_lm_table(runs: list[list[dict]]) -> tuple[str, dict]:
    """(GPU, table 'train-lm') from the summaries.json of examples/train_lm.py runs on one
    GPU, each with both FFNs at the same settings: a row per model and step form (a CUDA
    graph's replay or eager), FlashMHF's tokens/s with its ratio over SwiGLU's in the same
    run."""
    rows, envs, steps = [], set(), set()
    for summaries in runs:
        by_ffn = {s["ffn"]: s for s in summaries}
        if set(by_ffn) != set(TRAIN_LM_FFNS):
            raise ResultsError(f"a train_lm run with both FFNs is needed, got {sorted(by_ffn)}")
        for s in summaries:
            if "environment" not in s or s["environment"]["device"] in ("cpu", None):
                raise ResultsError(f"run {s['name']!r} has no GPU environment (a CPU run?)")
            env = s["environment"]
            envs.add((env["device"], env["torch"], env["triton"], env["date"]))
            steps.add(s["steps_done"])
        graphed = {s["train"].get("cuda_graph", False) for s in summaries}
        if len(graphed) != 1:
            raise ResultsError("the run's models trained in different step forms")
        form = "CUDA graph" if graphed.pop() else "eager"
        swiglu = by_ffn["swiglu"]["tokens_per_s"]
        for ffn, label in TRAIN_LM_FFNS.items():
            s, row = by_ffn[ffn], f"{label}, {form}"
            throughput = {"row": row, "metric": "throughput", "value": round(s["tokens_per_s"])}
            if ffn == "flashmhf":
                throughput["ratio"] = round(s["tokens_per_s"] / swiglu, 2)
            rows += [
                {**throughput, "unit": "tokens/s"},
                {"row": row, "metric": "peak", "value": round(s["peak_mem_mib"]), "unit": "MiB"},
                {
                    "row": row,
                    "metric": "final validation loss",
                    "value": round(s["final_val_loss"], 4),
                    "unit": "nats/byte",
                },
            ]
    if len(envs) != 1 or len(steps) != 1:
        raise ResultsError(f"runs of one GPU, software, day and length are needed: {envs} {steps}")
    gpu, torch_version, triton_version, date = envs.pop()
    table = {
        "title": (
            "End to end: `examples/train_lm.py --ffn both` at its default sizes (28.6M "
            "parameters, d_model 512, 8 layers; FlashMHF 4 heads, I = 1280, E = 5), bf16 "
            f"autocast, {steps.pop()} steps of 32 x 512 tokens, both models in one process per "
            "run; each step's forward and backward replayed from a CUDA graph (the default on "
            "a GPU) or run eagerly (--no-cuda-graph)."
        ),
        "torch": torch_version,
        "triton": triton_version,
        "date": date,
        "command": "python3 examples/train_lm.py --ffn both [--no-cuda-graph]",
        "row_label": "FFN, steps",
        "ratio": "FlashMHF's tokens/s over SwiGLU's in the same run",
        "rows": rows,
    }
    return gpu, table


def add_train_lm(paths: list[Path], folder: Path = RESULTS) -> Path:
    """Write (or replace) table 'train-lm' of the GPU's results file from train_lm runs'
    summaries.json files."""
    gpu, table = train_lm_table([json.loads(p.read_text()) for p in paths])
    return _write_tables(gpu, {"train-lm": table}, folder)


#: the order columns of a pdl table: what runs before each timed call (fp8_fwd_check --pdl)
PDL_ORDERS = ("GEMM between", "router between")


def pdl_table(check_doc: dict, mtime_date: str) -> tuple[str, dict]:
    """(gpu, table) of the 'pdl' rows of a benchmarks/fp8_fwd_check.py --pdl JSON file:
    a row per (shape, tokens, order), a column per weight format with and without pdl
    (the dispatched config and the same with pdl flipped), in us per call. The GEMM and
    router alone are left out. A file without a date (before the script wrote one) is
    dated by its modification time."""
    out = []
    for r in check_doc["rows"]:
        if r.get("kind") != "pdl" or "alone" in r["method"]:
            continue
        method, _, order = r["method"].partition(", ")
        if order and order not in PDL_ORDERS:
            raise ValueError(f"pdl row of unknown order: {r['method']!r}")
        weights = "FP8" if method.startswith("FP8") else "16-bit"
        pdl = r["config"].endswith(" pdl")  # the config's describe(); 'dispatched' for 16-bit
        row = f"{r['shape']}, {r['tokens']}, {order or 'back to back'}"
        metric = f"{weights}, {'pdl' if pdl else 'no pdl'}"
        out.append({"row": row, "metric": metric, "value": r["us"], "unit": "us"})
    if not out:
        raise ValueError("no 'pdl' rows: run fp8_fwd_check.py with --pdl")
    table = {
        "title": (
            "Programmatic dependent launch of the decode forward, in us per call (CUDA graphs "
            "of at least 32 calls, each on its own copy of the weights, bf16 activations): "
            "the 16-bit weights' and the FP8 W8A8 split forward's dispatched configs and "
            "each with `pdl` flipped, timed back to back, with a bf16 GEMM (tokens x H*D "
            "by H*D x H*D) before each call, and after the layer's RMSNorm + router kernel "
            "whose q and R the call takes; every pdl output bitwise the plain launch's."
        ),
        "torch": check_doc["torch"],
        "triton": check_doc["triton"],
        "date": check_doc.get("date", mtime_date),
        "command": (
            "python3 benchmarks/fp8_fwd_check.py --skip-verify --skip-timing --pdl "
            "--decode-shapes 1.3B,370M,1.3B-kv4 --json pdl.json"
        ),
        "row_label": "shape, tokens, before each call",
        "rows": out,
    }
    return check_doc["gpu"], table


def add_pdl(path: Path, name: str, folder: Path = RESULTS) -> Path:
    """Write (or replace) table `name` of the GPU's results file from an fp8_fwd_check
    --pdl run's JSON."""
    import datetime

    check_doc = json.loads(path.read_text())
    if not all(r.get("bitwise", True) for r in check_doc["rows"]):
        raise ValueError(f"{path}: a pdl output differed from the plain launch's")
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    gpu, table = pdl_table(check_doc, mtime.strftime("%Y-%m-%d"))
    return _write_tables(gpu, {name: table}, folder)


def add_tables(path: Path, folder: Path = RESULTS) -> Path:
    """Write (or replace) the tables of a results fragment (a results file of one GPU's
    new tables, as benchmarks/bwd_ws_check.py --json writes) into that GPU's file."""
    fragment = json.loads(path.read_text())
    check(fragment, path.name)
    return _write_tables(fragment["gpu"], fragment["tables"], folder)


def _write_tables(gpu: str, tables: dict[str, dict], folder: Path) -> Path:
    path = folder / f"{gpu_slug(gpu)}.json"
    doc = (
        json.loads(path.read_text())
        if path.exists()
        else {"format": FORMAT, "gpu": gpu, "tables": {}}
    )
    doc["tables"].update(tables)
    check(doc, path.name)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the marked tables of docs/PERFORMANCE.md from "
        "benchmarks/results/*.json (format: this script's docstring)."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and print a diff if the doc is stale",
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="the document (default %(default)s)")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="the folder of results files (default %(default)s)",
    )
    parser.add_argument(
        "--add-bench",
        type=Path,
        metavar="BENCH_JSON",
        help="first add the rows of an `mhfgen bench --json` file as table "
        "--table of its GPU's results file",
    )
    parser.add_argument(
        "--table",
        default=None,
        help="the table --add-bench (default bench) or --add-pdl (default decode-pdl) writes",
    )
    parser.add_argument(
        "--add-compare",
        type=Path,
        metavar="TABLE",
        help="first add a benchmarks/bench_h200.py run's table.csv (or table.json) as "
        "tables 'comparison' and 'layers' of its GPU's results file",
    )
    parser.add_argument(
        "--compare-name",
        default="comparison",
        metavar="NAME",
        help="the table --add-compare writes: NAME (the core op's rows only) instead of "
        "'comparison' and 'layers' (default %(default)s)",
    )
    parser.add_argument(
        "--compare-command",
        default=None,
        metavar="COMMAND",
        help="the command line the --add-compare tables cite (default: bench_h200.py OUT, "
        "with --authors-kernel where the authors' kernel ran)",
    )
    parser.add_argument(
        "--add-train-lm",
        type=Path,
        nargs="+",
        metavar="SUMMARIES",
        help="first add examples/train_lm.py runs' summaries.json files (one GPU, both "
        "FFNs each) as table 'train-lm' of their GPU's results file",
    )
    parser.add_argument(
        "--add-pdl",
        type=Path,
        metavar="CHECK_JSON",
        help="first add the 'pdl' rows of a benchmarks/fp8_fwd_check.py --pdl --json file "
        "as table --table (default decode-pdl) of its GPU's results file",
    )
    parser.add_argument(
        "--add-tables",
        type=Path,
        metavar="FRAGMENT",
        help="first add the tables of a results fragment (this script's format, one GPU, "
        "e.g. from benchmarks/bwd_ws_check.py --json) to its GPU's results file",
    )
    args = parser.parse_args(argv)
    try:
        if args.add_tables:
            print(f"wrote {add_tables(args.add_tables, args.results)}", file=sys.stderr)
        if args.add_pdl:
            written = add_pdl(args.add_pdl, args.table or "decode-pdl", args.results)
            print(f"wrote {written}", file=sys.stderr)
        if args.add_bench:
            written = add_bench(args.add_bench, args.table or "bench", args.results)
            print(f"wrote {written}", file=sys.stderr)
        if args.add_compare:
            written = add_compare(
                args.add_compare, args.results, args.compare_name, args.compare_command
            )
            print(f"wrote {written}", file=sys.stderr)
        if args.add_train_lm:
            print(f"wrote {add_train_lm(args.add_train_lm, args.results)}", file=sys.stderr)
        text = args.doc.read_text()
        new = render(text, load(args.results))
    except (OSError, ValueError, KeyError) as exc:
        print(f"render_performance: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            sys.stdout.writelines(
                difflib.unified_diff(
                    text.splitlines(True), new.splitlines(True), str(args.doc), "rendered"
                )
            )
            return 1
        return 0
    if new != text:
        args.doc.write_text(new)
        print(f"updated {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
