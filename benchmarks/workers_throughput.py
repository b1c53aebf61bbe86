"""Trial throughput of `mhfgen tune --workers N` against one worker, on one problem.

Each run is one `mhfgen tune` command with cold mhfgen and Triton caches, its own tuning
database and a fresh journal study, so no run reuses another's compiled kernels or
trials. Compile processes are split among the workers (--jobs = CPU cores / N), so every
run has the same compile parallelism and the workers add GPUs only.

    wall s         the whole command, timed from outside (start-up, search, re-timing)
    search s       from the first trial's start to the last trial's end (from the study)
    trials/min     evaluated configs (timed or failed) per minute of the search
    vs 1 worker    trials/min over the 1-worker run's
    per worker     configs each worker evaluated
    <kernel> ms    the winner's side-by-side median: the workers must find configs as good

Usage:
    python benchmarks/workers_throughput.py OUTDIR            # 1 vs 2 workers: 370M, 16384
                                                              # tokens, bf16, 48 trials/kernel
    python benchmarks/workers_throughput.py OUTDIR --workers 1,2,4,8 --trials 64
    python benchmarks/workers_throughput.py OUTDIR --cpu-smoke   # the script's logic through
                                                                 # the interpreter: NOT GPU figures
A finished run (OUTDIR/n<N>/run.json) is kept and skipped when the script runs again.
Writes OUTDIR/workers_throughput.md (printed) and OUTDIR/workers_throughput.json, with the
GPU name, the versions and the date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mhfgen  # first: switches Triton's interpreter on where there is no GPU

# isort: split
import optuna
import torch
import triton

from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.problem import DeviceFacts
from mhfgen.tuning.study import NOT_EVALUATED, storage_for

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"flash_mhf_fwd": "fwd", "flash_mhf_bwd_dq": "dq", "flash_mhf_bwd_dkv": "dkv"}


def provenance(smoke: bool) -> dict:
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    return {
        "gpu": dataclasses.asdict(DeviceFacts.of(device)),
        "gpus_visible": torch.cuda.device_count() if device.type == "cuda" else 0,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "optuna": optuna.__version__,
        "mhfgen": mhfgen.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def tune_command(args, workers: int, folder: Path) -> list[str]:
    cmd = [
        sys.executable,
        str(ROOT / "cli.py"),
        "tune",
        "--no-progress",
        "--workers",
        str(workers),
        "--storage",
        f"journal:{folder / 'study.journal'}",
        "--trials",
        str(args.trials),
        "--kernels",
        args.kernels,
        "--seed",
        str(args.seed),
        "--jobs",
        str(max(1, (os.cpu_count() or 1) // workers)),
    ]
    if not args.cpu_smoke:
        cmd += ["--preset", args.preset, "--tokens", str(args.tokens), "--dtype", args.dtype]
    return cmd


def study_figures(journal: Path) -> dict:
    """Evaluated trials, the search span and the trials per worker, from the study."""
    storage = storage_for(f"journal:{journal}")
    starts, ends, per_worker, evaluated = [], [], {}, 0
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            if not t.user_attrs.get("config") or t.datetime_complete is None:
                continue
            done = t.state == optuna.trial.TrialState.COMPLETE or t.user_attrs.get("stage") not in (
                None,
                *NOT_EVALUATED,
            )
            if not done:
                continue
            evaluated += 1
            starts.append(t.datetime_start)
            ends.append(t.datetime_complete)
            worker = t.user_attrs.get("worker", "?")
            per_worker[worker] = per_worker.get(worker, 0) + 1
    span = (max(ends) - min(starts)).total_seconds() if starts else 0.0
    return {
        "evaluated": evaluated,
        "search_s": span,
        "per_worker": sorted(per_worker.values(), reverse=True),
    }


def run_one(args, workers: int, out: Path) -> dict:
    folder = out / f"n{workers}"
    done = folder / "run.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = dict(
        os.environ,
        MHFGEN_CACHE_DIR=str(folder / "mhfgen-cache"),
        TRITON_CACHE_DIR=str(folder / "triton-cache"),
        MHFGEN_DB=str(folder / "tuning.sqlite"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    cmd = tune_command(args, workers, folder)
    print(f"workers={workers}: {' '.join(cmd[1:])}", file=sys.stderr)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (folder / "tune.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(
            f"workers={workers}: mhfgen tune failed ({proc.returncode}); "
            f"see {folder / 'tune.log'}:\n{proc.stderr[-2000:]}"
        )
    figures = study_figures(folder / "study.journal")
    with TuningDB.open(folder / "tuning.sqlite", readonly=True) as db:
        winners = {SHORT.get(w.key.kernel, w.key.kernel): w.ms for w in db.winners()}
        stored = len(db.trials())
    result = {
        "workers": workers,
        "wall_s": wall,
        **figures,
        "stored_trials": stored,
        "trials_per_min": 60.0 * figures["evaluated"] / figures["search_s"]
        if figures["search_s"] > 0
        else None,
        "winner_ms": winners,
        "command": cmd[1:],
    }
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def report(args, runs: list[dict], env: dict) -> str:
    kernels = [k.strip() for k in args.kernels.split(",")]
    base = next((r["trials_per_min"] for r in runs if r["workers"] == 1), None)
    lines = ["# mhfgen tune --workers: trial throughput", ""]
    if args.cpu_smoke:
        lines += [
            "**CPU smoke run through Triton's interpreter: NOT GPU timings; these "
            "figures only show that the script works.**",
            "",
        ]
    gpu = env["gpu"]
    problem = (
        "the CPU's small problem"
        if args.cpu_smoke
        else f"{args.preset}, {args.tokens} tokens, {args.dtype}"
    )
    lines += [
        f"{gpu['gpu_name']} (compute capability {gpu['compute_capability']}), "
        f"{env['gpus_visible']} GPU(s) visible, {env['cpu_cores']} CPU cores; "
        f"torch {env['torch']}, Triton {env['triton']}, Optuna {env['optuna']}, "
        f"mhfgen {env['mhfgen']}, {env['date']}",
        f"Problem: {problem}; kernels {args.kernels}; {args.trials} trials per kernel; "
        f"seed {args.seed}; cold caches per run; journal study.",
        "",
        "| workers | trials | wall s | search s | trials/min | vs 1 worker | per worker | "
        + " | ".join(f"{k} ms" for k in kernels)
        + " |",
        "|---" * (7 + len(kernels)) + "|",
    ]
    for r in runs:
        rate = r["trials_per_min"]
        ratio = f"{rate / base:.2f}x" if rate and base else "-"
        ms = " | ".join(f"{r['winner_ms'][k]:.4g}" if k in r["winner_ms"] else "-" for k in kernels)
        lines.append(
            f"| {r['workers']} | {r['evaluated']} | {r['wall_s']:.1f} | "
            f"{r['search_s']:.1f} | {rate:.1f} | {ratio} | "
            f"{'/'.join(map(str, r['per_worker']))} | {ms} |"
            if rate
            else f"| {r['workers']} | {r['evaluated']} | {r['wall_s']:.1f} | - | - | - | "
            f"{'/'.join(map(str, r['per_worker']))} | {ms} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--workers", default="1,2", help="comma list of worker counts (default 1,2)")
    p.add_argument("--preset", default="370M")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--trials", type=int, default=None, help="per kernel (default 48; 4 smoke)")
    p.add_argument("--kernels", default=None, help="default fwd,dq,dkv (fwd smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run the script's logic on the CPU through the interpreter",
    )
    args = p.parse_args(argv)
    args.trials = args.trials or (4 if args.cpu_smoke else 48)
    args.kernels = args.kernels or ("fwd" if args.cpu_smoke else "fwd,dq,dkv")
    if not args.cpu_smoke and not torch.cuda.is_available():
        p.error("no CUDA GPU here; use --cpu-smoke to check the script on the CPU")
    counts = [int(w) for w in args.workers.split(",")]
    if not args.cpu_smoke and max(counts) > torch.cuda.device_count():
        p.error(f"--workers {max(counts)} needs as many GPUs; {torch.cuda.device_count()} visible")
    args.outdir.mkdir(parents=True, exist_ok=True)
    runs = [run_one(args, n, args.outdir) for n in counts]
    env = provenance(args.cpu_smoke)
    text = report(args, runs, env)
    (args.outdir / "workers_throughput.md").write_text(text)
    (args.outdir / "workers_throughput.json").write_text(
        json.dumps({"environment": env, "smoke": args.cpu_smoke, "runs": runs}, indent=1) + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
