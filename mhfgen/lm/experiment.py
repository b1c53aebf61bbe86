"""Several training runs into one directory: a CSV per run, one PNG, a JSON of summaries."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import ByteCorpus
from .model import ModelConfig
from .report import plot_curves, write_curve_csv, write_json
from .train import TrainConfig, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One run: its name (file stem of its CSV), model and training configuration."""

    name: str
    model: ModelConfig
    train: TrainConfig


def run_one(
    spec: RunSpec, corpus: ByteCorpus, out_dir: Path, progress: bool = True
) -> tuple[dict, list[dict]]:
    """Train one run, write `<out_dir>/<name>.csv`; return (summary, rows).

    NOTE: an exception is logged with its traceback and returned as {"name", "error"}
    instead of propagating: a one-shot GPU run should still record the runs that
    worked. Callers that want exceptions call mhfgen.lm.train directly.
    """
    try:
        result = train(spec.name, spec.model, spec.train, corpus, progress=progress)
    except Exception as exc:  # noqa: BLE001 (recorded, see NOTE)
        log.exception("run %s failed", spec.name)
        return {"name": spec.name, "error": f"{type(exc).__name__}: {exc}"[:300]}, []
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    write_curve_csv(result, Path(out_dir) / f"{spec.name}.csv")
    return result.summary, result.rows


def plot_or_explain(curves: dict[str, list[dict]], path: Path, title: str) -> Path | None:
    """plot_curves, or None with a printed reason when matplotlib is missing."""
    if not curves:
        return None
    try:
        return plot_curves(curves, path, title)
    except ImportError as exc:
        print(f"no plot {path}: {exc}")
        return None


def run_all(
    specs: list[RunSpec],
    corpus: ByteCorpus,
    out_dir: Path,
    title: str = "",
    plot_name: str = "loss.png",
    progress: bool = True,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """run_one for each spec in order, then the plot and `summaries.json`; returns
    (summaries, curves by run name)."""
    out_dir = Path(out_dir)
    summaries, curves = [], {}
    for spec in specs:
        summary, rows = run_one(spec, corpus, out_dir, progress)
        summaries.append(summary)
        if rows:
            curves[spec.name] = rows
    plot_or_explain(curves, out_dir / plot_name, title)
    write_json(summaries, out_dir / "summaries.json")
    return summaries, curves
