"""What a run leaves on disk: curve CSVs, a PNG of the loss curves, summary tables, and the
environment (GPU, versions, date) every recorded figure must carry.

matplotlib is optional: `plot_curves` imports it lazily and raises ImportError with a clear
message when it is missing; everything else needs only the standard library and torch.
"""

from __future__ import annotations

import csv
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .train import CURVE_FIELDS, RunResult


def write_curve_csv(result: RunResult, path: Path) -> Path:
    """Write the run's rows (CURVE_FIELDS columns; empty cells for missing values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        for row in result.rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CURVE_FIELDS})
    return path


def read_curve_csv(path: Path) -> list[dict]:
    """Rows of a curve CSV, numbers parsed, empty cells as None."""
    with Path(path).open(newline="") as f:
        return [
            {k: (None if v == "" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to window - 1 values before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(runs: dict[str, list[dict]], path: Path, title: str = "", smooth: int = 10) -> Path:
    """PNG of training loss (thin; running mean over `smooth` steps) and validation loss
    (markers) against tokens, one colour per run. Raises ImportError naming the fix when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "the loss plot needs matplotlib (pip install matplotlib); the CSVs hold the same curves"
        ) from exc
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for i, (name, rows) in enumerate(runs.items()):
        colour = f"C{i}"
        train = [(r["tokens"] / 1e6, r["train_loss"]) for r in rows if r["train_loss"] is not None]
        val = [(r["tokens"] / 1e6, r["val_loss"]) for r in rows if r["val_loss"] is not None]
        if train:
            xs, ys = zip(*train)
            ax.plot(
                xs,
                running_mean(list(ys), smooth),
                color=colour,
                alpha=0.4,
                linewidth=0.8,
                label=f"{name} train (mean of {smooth} steps)",
            )
        if val:
            ax.plot(*zip(*val), color=colour, marker="o", markersize=3, label=f"{name} validation")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(summaries: list[dict]) -> str:
    """A markdown table of run summaries (see train.train for the keys)."""
    lines = [
        "| run | FFN | backend | params | FFN params | steps | tokens | final val loss "
        "| tokens/s | peak MiB | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if "error" in s:
            error = s["error"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {s['name']} | failed: {error} |" + " |" * 9)
            continue
        early = " (stopped early)" if s["stopped_early"] else ""
        fp8 = (
            f" (FP8: {s['fp8_val_loss']:.4f}, {100 * s['fp8_val_loss_change']:+.2f}%)"
            if "fp8_val_loss" in s
            else ""
        )
        lines.append(
            f"| {s['name']} | {s['ffn']} | {s['backend']} | {s['params']['total']:,} "
            f"| {s['params']['ffn']:,} | {s['steps_done']}{early} | {s['tokens']:,} "
            f"| {s['final_val_loss']:.4f}{fp8} | {_fmt(s['tokens_per_s'], ',.0f')} "
            f"| {_fmt(s['peak_mem_mib'], ',.0f')} | {s['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def curve_difference(a: list[dict], b: list[dict]) -> dict:
    """|a - b| of training loss and of validation loss over the steps both curves have:
    the largest (and its step), the mean, and the first (before updates compound)."""
    out = {}
    for key in ("train_loss", "val_loss"):
        va = {r["step"]: r[key] for r in a if r[key] is not None}
        vb = {r["step"]: r[key] for r in b if r[key] is not None}
        common = sorted(set(va) & set(vb))
        diffs = [abs(va[s] - vb[s]) for s in common]
        out[key] = {
            "max_abs_diff": max(diffs) if diffs else None,
            "at_step": common[diffs.index(max(diffs))] if diffs else None,
            "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
            "first_abs_diff": diffs[0] if diffs else None,
            "steps_compared": len(common),
        }
    return out


def _git(*args: str) -> str:
    """The output of `git ARGS` in this checkout (CalledProcessError where it fails)."""
    folder = str(Path(__file__).resolve().parent)
    return subprocess.run(
        ["git", "-C", folder, *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def environment() -> dict:
    """GPU, versions, date and git commit, for the record beside every figure."""
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = (
            f"{props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
        )
    else:
        env["gpu"] = None
    try:
        commit = _git("rev-parse", "--short", "HEAD").strip()
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        env["git_commit"] = commit + ("+uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def write_json(obj, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path
