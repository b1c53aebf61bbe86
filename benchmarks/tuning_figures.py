"""The tuning figures of docs/TUNING.md, measured on one GPU model in one run:

  suite     tuned vs built-in default on 30 shapes (forward, dQ/dR and dK/dU/dV kernels),
            each tuned like `mhfgen tune` does (Optuna, --trials per kernel); the
            speed-ups come from the tuner's final side-by-side rounds. Bar: geometric mean
            of the speed-ups >= 1.10.
  grid      Optuna vs the exhaustive grid on 2 shapes (forward and dK/dU/dV): the grid
            times every valid config once (recorded), Optuna gets 30% of the grid's
            trials, then both winners are re-timed side by side. Also 10 replayed Optuna
            runs (seeds 0..9) on the grid's recorded timings. Bar: >= 98% of the grid's
            best with <= 30% of its trials.
  walltime  one bare `mhfgen tune` (370M, 16384 tokens, bf16, fwd + bwd) with cold
            mhfgen and Triton caches, timed from outside. Bar: <= 120 s.
  report    summary.md and results.json from whatever parts have finished.

Usage (each part resumable: finished shapes are kept in OUTDIR and skipped):
    python benchmarks/tuning_figures.py OUTDIR                     # everything (~15 min on 1 GPU)
    python benchmarks/tuning_figures.py OUTDIR --part suite --shapes 1-4
    python benchmarks/tuning_figures.py OUTDIR --part suite --shapes 5-8
    python benchmarks/tuning_figures.py OUTDIR --part grid --shapes 370M-T16384
    python benchmarks/tuning_figures.py OUTDIR --part grid --shapes 1.3B-T16384
    python benchmarks/tuning_figures.py OUTDIR --part walltime
    python benchmarks/tuning_figures.py OUTDIR --gpus 8            # suite and grid spread over 8 GPUs
    python benchmarks/tuning_figures.py OUTDIR --cpu-smoke         # the script's logic, interpreter
Every part ends by rewriting OUTDIR/summary.md (printed) and OUTDIR/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mhfgen  # first: switches Triton's interpreter on where there is no GPU

# isort: split
import torch
import triton

from mhfgen.registry import default_config
from mhfgen.spec import KernelSpec
from mhfgen.tuning.outcome import Candidate
from mhfgen.tuning.problem import DeviceFacts, TuningProblem
from mhfgen.tuning.search import SearchSettings, Tuner, describe_config
from mhfgen.tuning.timer import RecordingTimer, ReplayTimer

ROOT = Path(__file__).resolve().parents[1]
SPEEDUP_BAR, GRID_FRACTION_BAR, GRID_TRIALS_BAR, WALLTIME_BAR_S = 1.10, 0.98, 0.30, 120.0
REPLAY_SEEDS = 10
FINAL_ROUNDS = 5


@dataclass(frozen=True)
class Shape:
    """One problem of the suite: (d, H, D, I, E) with Hkv, and tokens."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    experts: int
    tokens: int
    dtype: str = "bfloat16"
    #: "preset": a reference preset (mhfgen.presets), where the built-in defaults were
    #: chosen by hand from H200 sweeps; "other": shapes nobody swept, where a user's own
    #: tuning has to do the work
    group: str = "preset"

    def problem(self, target: str) -> TuningProblem:
        spec = KernelSpec(
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.experts,
            self.intermediate // self.experts,
            self.dtype,
            target,
        )
        return TuningProblem(spec, self.tokens)


def _presets_at(tokens: tuple[int, ...]) -> list[Shape]:
    """The three reference presets at each token count."""
    dims = {
        "1.3B": (16, 16, 128, 5632, 22),
        "370M": (8, 8, 128, 2816, 11),
        "128M": (8, 8, 96, 2048, 8),
    }
    return [Shape(f"{name}-T{t}", *dims[name], t) for t in tokens for name in dims]


#: the suite is also what ships in tuning_db/: the presets at 16384 tokens first, then
#: decode (1, 8, 64 tokens), then 2048, 8192 and 32768 tokens, then Hkv < H and D = 64
#: (23 shapes); then 7 more shapes of the "other" group (shapes 24-30): Hkv < H, smaller
#: and single experts, D = 96 with De = 80, D = 64 with GQA, float16, d = 1536
SUITE = _presets_at((16384, 1, 8, 64, 2048, 8192, 32768)) + [
    Shape("1.3B-GQA4-T16384", 16, 4, 128, 5632, 22, 16384, group="other"),
    Shape("H16D64-T16384", 16, 16, 64, 2816, 11, 16384, group="other"),
    Shape("370M-GQA2-T8192", 8, 2, 128, 2816, 11, 8192, group="other"),
    Shape("H16-E44De128-T16384", 16, 16, 128, 5632, 44, 16384, group="other"),
    Shape("H8-E1-T8192", 8, 8, 128, 2816, 1, 8192, group="other"),
    Shape("H8D96-De80-T4096", 8, 8, 96, 1280, 16, 4096, group="other"),
    Shape("H32D64-GQA4-T8192", 32, 8, 64, 4096, 16, 8192, group="other"),
    Shape("370M-fp16-T16384", 8, 8, 128, 2816, 11, 16384, "float16", group="other"),
    Shape("H12-E12-T16384", 12, 12, 128, 3072, 12, 16384, group="other"),
]
GROUP_OF = {s.name: s.group for s in SUITE}
GRID_SHAPES = ("370M-T16384", "1.3B-T16384")
#: the Triton-language variant of each op of the split training step
KERNELS = ("flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv")
GRID_KERNELS = ("flash_mhf_fwd", "flash_mhf_bwd_dkv")
SMOKE_SUITE = [
    Shape("smoke-A", 2, 1, 32, 64, 2, 32, "float32"),
    Shape("smoke-B", 2, 2, 16, 32, 1, 16, "float32"),
]


# -- measuring ------------------------------------------------------------------------
class Bench:
    """The device, and timers for problems on it (one compile pool for all of them)."""

    def __init__(self, smoke: bool, jobs: int) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.facts = DeviceFacts.of(self.device)
        self.pool = None
        if not smoke and jobs > 1:
            from mhfgen.tuning.compile import CompilePool

            self.pool = CompilePool("cuda", jobs)

    def timer(self, problem: TuningProblem):
        from mhfgen.tuning.workload import Workload

        workload = Workload(problem, self.device)
        if self.smoke:
            from mhfgen.tuning.timer import InterpreterTimer

            return InterpreterTimer(workload, repeats=2)
        from mhfgen.tuning.timer import GpuTimer

        return GpuTimer(workload, pool=self.pool)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if not self.smoke:
            torch.cuda.empty_cache()


def provenance(facts: DeviceFacts) -> dict:
    return {
        "gpu": dataclasses.asdict(facts),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "mhfgen": mhfgen.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_suite_shape(out: Path, shape: Shape, bench: Bench, trials: int) -> dict:
    """Tune the three kernels of one shape; the result as a dict (also written)."""
    from mhfgen.tuning.db import TuningDB

    problem = shape.problem(bench.facts.target)
    timer = bench.timer(problem)
    settings = SearchSettings(trials=trials, batch=min(16, os.cpu_count() or 1))
    start = time.perf_counter()
    with TuningDB.open(out / "tuning.sqlite") as db:
        tuner = Tuner(
            problem,
            bench.facts,
            timer,
            db,
            settings,
            f"sqlite:///{(out / 'studies' / f'{shape.name}.sqlite').resolve()}",
        )
        (out / "studies").mkdir(parents=True, exist_ok=True)
        results = tuner.tune()
    timer.close()
    label, gpu_timings = timer.label, timer.gpu_timings
    del timer, tuner  # the inputs and float64 references of this shape
    if not bench.smoke:
        torch.cuda.empty_cache()
    wall = time.perf_counter() - start
    kernels = {}
    for r in results:
        kernels[r.kernel] = {
            "default": r.default.as_dict(),
            "default_text": describe_config(r.default),
            "default_ms": r.default_ms,
            "winner": r.winner.as_dict() if r.winner else None,
            "winner_text": describe_config(r.winner) if r.winner else None,
            "ms": r.ms,
            "tflops": r.tflops,
            "speedup": r.speedup,
            "evaluated": r.evaluated,
            "grid_size": r.grid_size,
            "failures": r.failures,
        }
    doc = {
        "shape": dataclasses.asdict(shape),
        "trials": trials,
        "wall_s": wall,
        "timer": label,
        "gpu_timings": gpu_timings,
        "kernels": kernels,
        **provenance(bench.facts),
    }
    _write(out / "suite" / f"{shape.name}.json", doc)
    print(
        f"suite {shape.name}: "
        + ", ".join(
            f"{k.removeprefix('flash_mhf_')} {v['speedup']:.3f}x" if v["speedup"] else f"{k} -"
            for k, v in kernels.items()
        )
        + f" ({wall:.0f} s)",
        flush=True,
    )
    return doc


def run_grid_case(out: Path, shape: Shape, kernel: str, bench: Bench) -> dict:
    """Exhaustive grid vs Optuna with 30% of its trials, for one shape and kernel."""
    problem = shape.problem(bench.facts.target)
    tag = f"{shape.name}-{kernel.removeprefix('flash_mhf_')}"
    recorder = RecordingTimer(bench.timer(problem), bench.facts)
    start = time.perf_counter()
    grid = Tuner(
        problem,
        bench.facts,
        recorder,
        None,
        SearchSettings(trials=10**6, batch=min(16, os.cpu_count() or 1), strategy="grid"),
    ).tune_kernel(kernel)
    grid_wall = time.perf_counter() - start
    (out / "grid").mkdir(parents=True, exist_ok=True)
    recorder.save(out / "grid" / f"{tag}.timings.json")
    budget = max(1, int(GRID_TRIALS_BAR * grid.grid_size))
    start = time.perf_counter()
    live = Tuner(
        problem,
        bench.facts,
        recorder.inner,
        None,
        SearchSettings(trials=budget, batch=min(16, os.cpu_count() or 1), seed=0),
    ).tune_kernel(kernel)
    live_wall = time.perf_counter() - start
    # the two winners side by side, round-robin
    finals = {"grid": grid.winner, "optuna": live.winner}
    samples: dict[str, list[float]] = {"grid": [], "optuna": []}
    for i in range(FINAL_ROUNDS):
        for name in ("grid", "optuna") if i % 2 == 0 else ("optuna", "grid"):
            samples[name].append(recorder.inner.time(Candidate(kernel, finals[name])))
    grid_ms, live_ms = (statistics.median(samples[n]) for n in ("grid", "optuna"))
    recorder.inner.close()
    # replays of Optuna on the recorded grid timings, several seeds
    recording = recorder.recording()
    recorded = {
        json.dumps(r["config"], sort_keys=True): r["ms"] for r in recording["records"] if "ms" in r
    }
    best_recorded = min(recorded.values())
    replays = []
    for seed in range(REPLAY_SEEDS):
        r = Tuner(
            problem,
            bench.facts,
            ReplayTimer(recording),
            None,
            SearchSettings(trials=budget, batch=8, seed=seed, rounds=1),
        ).tune_kernel(kernel)
        replays.append({"seed": seed, "fraction": best_recorded / r.ms, "evaluated": r.evaluated})
    doc = {
        "shape": dataclasses.asdict(shape),
        "kernel": kernel,
        "grid_size": grid.grid_size,
        "grid_failures": grid.failures,
        "grid_wall_s": grid_wall,
        "grid_winner": describe_config(grid.winner),
        "optuna_winner": describe_config(live.winner),
        "optuna_trials": live.evaluated,
        "optuna_wall_s": live_wall,
        "trials_fraction": live.evaluated / grid.grid_size,
        "final_grid_ms": grid_ms,
        "final_optuna_ms": live_ms,
        "fraction": grid_ms / live_ms,
        "replay_fraction_min": min(r["fraction"] for r in replays),
        "replay_fraction_median": statistics.median(r["fraction"] for r in replays),
        "replays": replays,
        "timer": recorder.label,
        "gpu_timings": recorder.gpu_timings,
        **provenance(bench.facts),
    }
    _write(out / "grid" / f"{tag}.json", doc)
    print(
        f"grid {tag}: Optuna {doc['fraction']:.3f} of the grid's best with "
        f"{live.evaluated}/{grid.grid_size} trials; replays min "
        f"{doc['replay_fraction_min']:.3f}",
        flush=True,
    )
    return doc


def run_walltime(out: Path, smoke: bool) -> dict:
    """One bare `mhfgen tune` with cold caches, timed from outside."""
    with tempfile.TemporaryDirectory(dir=out) as cold:
        env = dict(
            os.environ,
            MHFGEN_CACHE_DIR=str(Path(cold) / "mhfgen"),
            TRITON_CACHE_DIR=str(Path(cold) / "triton"),
            MHFGEN_DB=str(Path(cold) / "tuning.sqlite"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        cmd = [sys.executable, "-c", "from mhfgen.cli import main; main()", "tune", "--no-progress"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    doc = {
        "command": "mhfgen tune (no flags: 370M, 16384 tokens, bf16 on a GPU)",
        "wall_s": wall,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr_tail": proc.stderr[-2000:],
        "gpu_timings": not smoke,
        **provenance(DeviceFacts.of(torch.device("cpu" if smoke else "cuda"))),
    }
    _write(out / "walltime.json", doc)
    print(f"walltime: {wall:.1f} s (exit {proc.returncode})", flush=True)
    return doc


# -- reporting ------------------------------------------------------------------------
def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def report(out: Path) -> str:
    suite = [json.loads(p.read_text()) for p in sorted((out / "suite").glob("*.json"))]
    grids = [
        json.loads(p.read_text())
        for p in sorted((out / "grid").glob("*.json"))
        if not p.name.endswith(".timings.json")
    ]
    wall = (
        json.loads((out / "walltime.json").read_text())
        if (out / "walltime.json").exists()
        else None
    )
    docs = suite + grids + ([wall] if wall else [])
    lines = ["# Tuning figures", ""]
    if docs:
        d = docs[0]
        lines += [
            f"{d['gpu']['gpu_name']} (compute capability {d['gpu']['compute_capability']}, "
            f"{d['gpu']['sm_count']} SMs), torch {d['torch']}, Triton {d['triton']}, "
            f"mhfgen {d['mhfgen']}, {d['date']}",
            "",
        ]
    if any(not d.get("gpu_timings", True) for d in docs):
        lines += ["**SMOKE RUN through Triton's interpreter: these are NOT GPU timings.**", ""]
    results = {"suite": suite, "grid": grids, "walltime": wall}

    if suite:
        lines += [
            "## Tuned vs built-in default",
            "",
            "Speed-up = default ms / tuned ms, both from the tuner's final side-by-side "
            "rounds; fwd+bwd = sum of the three kernels.",
            "",
            "| shape | tokens | fwd | dq | dkv | fwd+bwd | trials/kernel | wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        all_speedups, fwd_bwd = [], []
        for d in suite:
            ks = d["kernels"]
            cells = []
            for k in KERNELS:
                v = ks.get(k, {})
                cells.append(
                    f"{v['speedup']:.3f}x ({v['winner_text']})" if v.get("speedup") else "-"
                )
                all_speedups.append(v.get("speedup"))
            if all(ks.get(k, {}).get("ms") and ks[k].get("default_ms") for k in KERNELS):
                fb = sum(ks[k]["default_ms"] for k in KERNELS) / sum(ks[k]["ms"] for k in KERNELS)
            else:
                fb = None
            fwd_bwd.append(fb)
            s = d["shape"]
            lines.append(
                f"| {s['name']} (H{s['heads']}/Hkv{s['kv_heads']} D{s['head_dim']} "
                f"I{s['intermediate']} E{s['experts']}) | {s['tokens']} | "
                + " | ".join(cells)
                + f" | {f'{fb:.3f}x' if fb else '-'} | {d['trials']} | {d['wall_s']:.0f} |"
            )
        g_all, g_fb = _geomean(all_speedups), _geomean(fwd_bwd)
        per_kernel = {
            k: _geomean([d["kernels"].get(k, {}).get("speedup") for d in suite]) for k in KERNELS
        }
        groups = {}
        for d in suite:
            group = GROUP_OF.get(d["shape"]["name"], "other")
            groups.setdefault(group, []).extend(
                d["kernels"].get(k, {}).get("speedup") for k in KERNELS
            )
        lines += [
            "",
            f"geometric mean over {len(suite)} shapes x 3 kernels: "
            f"**{g_all:.3f}x** (bar >= {SPEEDUP_BAR:.2f}x: "
            f"{'PASS' if g_all and g_all >= SPEEDUP_BAR else 'FAIL'}"
            f"{'' if len(suite) >= 8 else f'; only {len(suite)} of 8 shapes measured'}); "
            f"fwd+bwd {g_fb:.3f}x; per kernel "
            + ", ".join(
                f"{k.removeprefix('flash_mhf_')} {v:.3f}x" for k, v in per_kernel.items() if v
            ),
            "",
        ]
        for group, values in sorted(groups.items(), reverse=True):
            what = (
                "the reference presets, where the built-in defaults were chosen from H200 sweeps"
                if group == "preset"
                else "other shapes, where nobody swept the defaults"
            )
            lines.append(
                f"- {group} ({what}): {len(values) // 3} shapes, geometric mean "
                f"**{_geomean(values):.3f}x**"
            )
        lines.append("")
        results["suite_geomean_by_group"] = {g: _geomean(v) for g, v in groups.items()}
        results["suite_geomean"] = g_all
        results["suite_geomean_fwd_bwd"] = g_fb

    if grids:
        lines += [
            "## Optuna vs exhaustive grid",
            "",
            "fraction = grid winner's ms / Optuna winner's ms, re-timed side by side "
            f"({FINAL_ROUNDS} rounds); replays: Optuna with seeds 0..{REPLAY_SEEDS - 1} on "
            "the grid's recorded timings.",
            "",
            "| shape | kernel | grid configs | Optuna trials | fraction | replays min / median "
            "| grid winner | Optuna winner | grid s | Optuna s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        ok = True
        for d in grids:
            passed = d["fraction"] >= GRID_FRACTION_BAR and d["trials_fraction"] <= GRID_TRIALS_BAR
            ok &= passed
            lines.append(
                f"| {d['shape']['name']} | {d['kernel']} | {d['grid_size']} | {d['optuna_trials']} "
                f"({d['trials_fraction']:.0%}) | {d['fraction']:.3f} | "
                f"{d['replay_fraction_min']:.3f} / {d['replay_fraction_median']:.3f} | "
                f"{d['grid_winner']} | {d['optuna_winner']} | {d['grid_wall_s']:.0f} | "
                f"{d['optuna_wall_s']:.0f} |"
            )
        spreads = [sp for sp in (grid_spread(out, d) for d in grids) if sp]
        if spreads:
            lines += [
                "",
                "What the whole space holds, from the grid's recorded timings (one "
                "timing per config): the built-in default against the best, the median "
                "and the worst valid config. No search within this space can beat the "
                "default by more than default / best (up to timing noise).",
                "",
                "| shape | kernel | valid configs | best ms | default ms | median ms | "
                "worst ms | default / best | median / default |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for sp in spreads:
                lines.append(
                    f"| {sp['shape']} | {sp['kernel']} | {sp['valid']} | {sp['best_ms']:.3f} | "
                    f"{sp['default_ms']:.3f} | {sp['median_ms']:.3f} | {sp['worst_ms']:.3f} | "
                    f"{sp['default_ms'] / sp['best_ms']:.3f}x | "
                    f"{sp['median_ms'] / sp['default_ms']:.2f}x |"
                )
            results["grid_spread"] = spreads
        lines += [
            "",
            f"bar: >= {GRID_FRACTION_BAR:.0%} of the grid's best with <= "
            f"{GRID_TRIALS_BAR:.0%} of its trials, on >= 2 shapes: "
            f"{'PASS' if ok and len({d['shape']['name'] for d in grids}) >= 2 else 'FAIL'}",
            "",
        ]

    if wall:
        passed = wall["returncode"] == 0 and wall["wall_s"] <= WALLTIME_BAR_S
        lines += [
            "## Wall time of one `mhfgen tune`",
            "",
            f"`{wall['command']}`, cold mhfgen and Triton caches: **{wall['wall_s']:.1f} s** "
            f"(exit {wall['returncode']}; bar <= {WALLTIME_BAR_S:.0f} s: "
            f"{'PASS' if passed else 'FAIL'})",
            "",
            "```",
            wall["stdout"].strip(),
            "```",
            "",
        ]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    _write(out / "results.json", results)
    return text


def grid_spread(out: Path, doc: dict) -> dict | None:
    """Best, built-in default, median and worst of a grid's recorded timings (None when
    the timings file is missing or the default config was not among the valid configs)."""
    tag = f"{doc['shape']['name']}-{doc['kernel'].removeprefix('flash_mhf_')}"
    path = out / "grid" / f"{tag}.timings.json"
    if not path.exists():
        return None
    records = [r for r in json.loads(path.read_text())["records"] if r.get("ms")]
    fields = {f.name for f in dataclasses.fields(Shape)}
    shape = Shape(**{k: v for k, v in doc["shape"].items() if k in fields})
    problem = shape.problem(doc["gpu"]["target"])
    default = dataclasses.asdict(
        default_config(doc["kernel"], problem.spec, shape.tokens, doc["gpu"]["sm_count"])
    )
    default_ms = [r["ms"] for r in records if r["config"] == default]
    if not records or not default_ms:
        return None
    ms = sorted(r["ms"] for r in records)
    return {
        "shape": shape.name,
        "kernel": doc["kernel"],
        "valid": len(ms),
        "best_ms": ms[0],
        "default_ms": default_ms[0],
        "median_ms": statistics.median(ms),
        "worst_ms": ms[-1],
    }


# -- driving ----------------------------------------------------------------------------
def _select(spec: str | None, shapes: list[Shape]) -> list[Shape]:
    """'1-4', '2,5', names, or None for all."""
    if not spec:
        return shapes
    chosen = []
    for part in spec.split(","):
        if "-" in part and part.replace("-", "").isdigit():
            lo, hi = map(int, part.split("-"))
            chosen += shapes[lo - 1 : hi]
        elif part.isdigit():
            chosen.append(shapes[int(part) - 1])
        else:
            chosen += [s for s in shapes if s.name == part]
    return chosen


def _spread(out: Path, args, gpus: int, suite: list[Shape], grid_shapes) -> None:
    """Run the suite and grid parts as one subprocess per GPU."""
    tasks = [
        ("suite", s.name)
        for s in _select(args.shapes, suite)
        if not (out / "suite" / f"{s.name}.json").exists()
    ]
    tasks += [
        ("grid", f"{name}:{k}")
        for name in grid_shapes
        for k in GRID_KERNELS
        if not (out / "grid" / f"{name}-{k.removeprefix('flash_mhf_')}.json").exists()
    ]
    jobs = max(1, (os.cpu_count() or 1) // gpus)
    procs = []
    for i in range(gpus):
        mine = tasks[i::gpus]
        if not mine:
            continue
        cmd = [
            sys.executable,
            __file__,
            str(out),
            "--part",
            "tasks",
            "--tasks",
            ";".join(f"{p}={n}" for p, n in mine),
            "--jobs",
            str(jobs),
            "--trials",
            str(args.trials),
            "--no-report",
        ] + (["--cpu-smoke"] if args.cpu_smoke else [])
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(i))
        procs.append(subprocess.Popen(cmd, env=env))
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        print(
            f"tuning_figures: {len(failed)} GPU worker(s) failed; rerun to retry their shapes",
            file=sys.stderr,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument(
        "--part", default="all", choices=("all", "suite", "grid", "walltime", "report", "tasks")
    )
    parser.add_argument(
        "--shapes",
        default=None,
        help="suite shapes: '1-4', '2,5' or names (with --part grid: which of "
        "the grid shapes, by name)",
    )
    parser.add_argument("--trials", type=int, default=32, help="Optuna trials per kernel (suite)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--gpus", type=int, default=1, help="spread suite and grid over GPUs")
    parser.add_argument("--redo", action="store_true", help="re-measure finished shapes")
    parser.add_argument("--tasks", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="two tiny shapes through Triton's interpreter: checks the script, "
        "measures nothing real",
    )
    args = parser.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available() and not args.cpu_smoke and args.part != "report":
        print(
            "tuning_figures: needs a CUDA GPU (or --cpu-smoke to check the script)", file=sys.stderr
        )
        return 2
    suite = SMOKE_SUITE if args.cpu_smoke else SUITE
    grid_shapes = [s.name for s in suite] if args.cpu_smoke else GRID_SHAPES
    if args.cpu_smoke:
        args.trials = min(args.trials, 4)
    if args.redo:
        for sub in ("suite", "grid"):
            for p in (out / sub).glob("*.json"):
                p.unlink()

    if args.part == "all" and args.gpus > 1:
        _spread(out, args, args.gpus, suite, grid_shapes)
    elif args.part in ("all", "suite", "grid", "tasks"):
        bench = Bench(args.cpu_smoke, args.jobs)
        try:
            todo = []
            if args.part == "tasks":
                for task in filter(None, args.tasks.split(";")):
                    part, name = task.split("=", 1)
                    todo.append((part, name))
            else:
                if args.part in ("all", "suite"):
                    todo += [("suite", s.name) for s in _select(args.shapes, suite)]
                if args.part in ("all", "grid"):
                    names = grid_shapes
                    if args.part == "grid" and args.shapes:
                        names = [
                            s.name for s in _select(args.shapes, suite) if s.name in grid_shapes
                        ]
                    todo += [("grid", f"{n}:{k}") for n in names for k in GRID_KERNELS]
            by_name = {s.name: s for s in suite}
            for part, name in todo:
                if part == "suite":
                    if (out / "suite" / f"{name}.json").exists():
                        continue
                    run_suite_shape(out, by_name[name], bench, args.trials)
                else:
                    shape, kernel = name.split(":")
                    tag = f"{shape}-{kernel.removeprefix('flash_mhf_')}"
                    if (out / "grid" / f"{tag}.json").exists():
                        continue
                    run_grid_case(out, by_name[shape], kernel, bench)
        finally:
            bench.close()
    if args.part in ("all", "walltime"):
        run_walltime(out, args.cpu_smoke)
    if not args.no_report:
        print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
