"""The recorded GPU runs of docs/TRAINING.md, in one command that ends within ~8 minutes.

    PYTHONPATH=. python examples/run_h200_lm.py OUT_DIR

1. Backend parity: one small FlashMHF model and seed, trained with backend="triton" and
   backend="torch" (bf16 autocast both), curves compared step by step.
2. Calibration: a few steps of each large model measure tokens/s, which sets the step count
   so that the slower run takes about --budget-seconds (shrunk if the earlier parts ran long).
3. FlashMHF against SwiGLU at matched parameters and equal tokens (same schedule, seed, data).
   If FlashMHF hits its time guard, SwiGLU stops at the same step.
Writes OUT_DIR/{parity,compare}/ (CSVs, loss.png, summaries.json), env.json, run.log and
summary.md, and prints summary.md last.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mhfgen.lm import ModelConfig, TrainConfig, load_corpus
from mhfgen.lm.experiment import RunSpec, plot_or_explain, run_all, run_one
from mhfgen.lm.model import CausalLM, count_parameters, matched_swiglu_intermediate
from mhfgen.lm.report import curve_difference, environment, summary_table, write_json

log = logging.getLogger("run_h200_lm")

PARITY_MODEL = ModelConfig(ffn="flashmhf", d_model=256, n_layers=4, n_heads=4, mhf_heads=2,
                           mhf_intermediate=512, mhf_experts=2, max_seq_len=256)
COMPARE_MODEL = ModelConfig(ffn="flashmhf", d_model=512, n_layers=8, n_heads=8, mhf_heads=4,
                            mhf_intermediate=1280, mhf_experts=5, max_seq_len=512)
# --tiny: a dry run of this script on the CPU (Triton's interpreter, fp32) in about a minute
TINY_PARITY_MODEL = ModelConfig(ffn="flashmhf", d_model=32, n_layers=1, n_heads=2, mhf_heads=2,
                                mhf_intermediate=64, mhf_experts=2, max_seq_len=32)
TINY_COMPARE_MODEL = replace(TINY_PARITY_MODEL, n_layers=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--total-seconds", type=float, default=420,
                   help="wall time the whole script aims to stay under")
    p.add_argument("--budget-seconds", type=float, default=100,
                   help="training time of the slower comparison run")
    p.add_argument("--parity-steps", type=int, default=300)
    p.add_argument("--min-steps", type=int, default=200)
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--parity-batch-size", type=int, default=16)
    p.add_argument("--parity-seq-len", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true",
                   help="dry run on the CPU with tiny models (checks the script, not FlashMHF)")
    args = p.parse_args(argv)
    if args.tiny:
        args.device, args.parity_steps, args.min_steps, args.max_steps = "cpu", 20, 20, 40
        args.batch_size, args.seq_len, args.parity_batch_size, args.parity_seq_len = 4, 32, 2, 32
        args.budget_seconds = min(args.budget_seconds, 10)
    args.parity_model = replace(TINY_PARITY_MODEL if args.tiny else PARITY_MODEL,
                                max_seq_len=args.parity_seq_len)
    args.compare_model = replace(TINY_COMPARE_MODEL if args.tiny else COMPARE_MODEL,
                                 max_seq_len=args.seq_len)
    return args


def setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr),
                                  logging.FileHandler(out / "run.log")])


def parity(args, corpus, out: Path) -> tuple[list[dict], dict]:
    cfg = TrainConfig(steps=args.parity_steps, batch_size=args.parity_batch_size,
                      seq_len=args.parity_seq_len, lr=args.lr,
                      warmup_steps=max(1, args.parity_steps // 10), eval_every=50,
                      eval_batches=8, device=args.device, max_seconds=90)
    specs = [RunSpec(f"parity-{b}", replace(args.parity_model, backend=b), cfg)
             for b in ("triton", "torch")]
    summaries, curves = run_all(specs, corpus, out, progress=False,
                                title="FlashMHF backend parity: triton vs torch, same seed")
    diff = (curve_difference(curves["parity-triton"], curves["parity-torch"])
            if len(curves) == 2 else {})
    write_json(diff, out / "difference.json")
    return summaries, diff


def calibrate(args, corpus, out: Path) -> dict[str, float | None]:
    """tokens/s of each comparison model over a few steps (kernels compiled on the way)."""
    cfg = TrainConfig(steps=40, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup_steps=10, eval_every=1000, eval_batches=1, timing_skip_steps=15,
                      device=args.device, max_seconds=60)
    rates = {}
    for kind in ("flashmhf", "swiglu"):
        model = replace(args.compare_model, ffn=kind, backend="triton")
        summary, _ = run_one(RunSpec(f"calibrate-{kind}", model, cfg), corpus, out,
                             progress=False)
        rates[kind] = summary.get("tokens_per_s")
        log.info("calibration %s: %s", kind, summary.get("error") or f"{rates[kind]:,.0f} tok/s")
    return rates


def compare(args, corpus, out: Path, steps: int, budget: float) -> list[dict]:
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup_steps=max(1, min(100, steps // 10)),
                      eval_every=max(1, steps // 10), eval_batches=16, device=args.device,
                      max_seconds=1.5 * budget)
    flash = RunSpec("flashmhf", replace(args.compare_model, backend="triton"), cfg)
    summaries, curves = [], {}
    summary, rows = run_one(flash, corpus, out, progress=False)
    summaries.append(summary)
    if rows:
        curves["flashmhf"] = rows
    if summary.get("stopped_early"):
        cfg = replace(cfg, stop_after=summary["steps_done"])
    summary, rows = run_one(RunSpec("swiglu", replace(args.compare_model, ffn="swiglu"), cfg),
                            corpus, out, progress=False)
    summaries.append(summary)
    if rows:
        curves["swiglu"] = rows
    plot_or_explain(curves, out / "loss.png",
                    "FlashMHF vs SwiGLU: matched parameters, equal tokens")
    write_json(summaries, out / "summaries.json")
    return summaries


def comparison_lines(summaries: list[dict]) -> list[str]:
    by = {s["name"]: s for s in summaries if "error" not in s}
    if set(by) != {"flashmhf", "swiglu"}:
        return ["Comparison incomplete: see the table and run.log."]
    f, s = by["flashmhf"], by["swiglu"]
    lines = [f"- Final validation loss: FlashMHF {f['final_val_loss']:.4f}, SwiGLU "
             f"{s['final_val_loss']:.4f} (FlashMHF - SwiGLU = "
             f"{f['final_val_loss'] - s['final_val_loss']:+.4f} nats/byte)."]
    if f["tokens_per_s"] and s["tokens_per_s"]:
        lines.append(f"- Training throughput: FlashMHF / SwiGLU = "
                     f"{f['tokens_per_s'] / s['tokens_per_s']:.3f}.")
    if f["peak_mem_mib"] and s["peak_mem_mib"]:
        lines.append(f"- Peak memory (whole training step, model and optimizer included): "
                     f"FlashMHF / SwiGLU = {f['peak_mem_mib'] / s['peak_mem_mib']:.3f}.")
    return lines


def parity_lines(diff: dict) -> list[str]:
    if not diff:
        return ["Parity incomplete: see the table and run.log."]
    t, v = diff["train_loss"], diff["val_loss"]
    if t["max_abs_diff"] is None or v["max_abs_diff"] is None:
        return ["Parity incomplete: no common steps."]
    return [f"- Largest |train loss(triton) - train loss(torch)| over {t['steps_compared']} "
            f"steps: {t['max_abs_diff']:.2e} (step {t['at_step']}); mean "
            f"{t['mean_abs_diff']:.2e}; at step 1 (before updates compound) "
            f"{t['first_abs_diff']:.2e}.",
            f"- Largest |validation loss(triton) - validation loss(torch)| over "
            f"{v['steps_compared']} evaluations: {v['max_abs_diff']:.2e} (step {v['at_step']})."]


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    setup_logging(args.out)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script records GPU runs")
    env = environment()
    write_json(env, args.out / "env.json")
    log.info("environment %s", env)
    corpus = load_corpus(max_bytes=2_000_000 if args.tiny else None)

    parity_summaries, diff = parity(args, corpus, args.out / "parity")
    rates = calibrate(args, corpus, args.out / "calibrate")
    known = [r for r in rates.values() if r]
    remaining = args.total_seconds - (time.perf_counter() - start)
    # two runs plus their evaluations (~10%) and start-up
    budget = max(20.0, min(args.budget_seconds, (remaining - 30) / 2.4))
    tokens_per_step = args.batch_size * args.seq_len
    steps = (max(args.min_steps, min(args.max_steps, int(budget * min(known) / tokens_per_step)))
             if known else args.min_steps)
    log.info("comparison: %d steps of %d tokens (budget %.0f s per run, %.0f s left)", steps,
             tokens_per_step, budget, remaining)
    compare_summaries = compare(args, corpus, args.out / "compare", steps, budget)

    params = {}
    for kind in ("flashmhf", "swiglu"):
        with torch.device("meta"):
            params[kind] = count_parameters(CausalLM(replace(args.compare_model, ffn=kind)))
    precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
    md = [
        "# FlashMHF language-model runs",
        "",
        f"GPU: {env['gpu']}; torch {env['torch']} (CUDA {env['cuda']}); Triton {env['triton']}; "
        f"Python {env['python']}; {env['date_utc']}; commit {env['git_commit']}.",
        f"Command: `{env['command']}`. Data: {corpus.describe()}.",
        "",
        f"## Backend parity (triton vs torch, same model, seed and batches, {precision})",
        f"Model: {args.parity_model}; {args.parity_steps} steps of {args.parity_batch_size} x "
        f"{args.parity_seq_len} tokens.",
        "",
        summary_table(parity_summaries),
        "",
        *parity_lines(diff),
        "",
        "## FlashMHF vs SwiGLU (matched parameters, equal tokens)",
        f"Model: {args.compare_model}; SwiGLU intermediate "
        f"{matched_swiglu_intermediate(args.compare_model)} (parameters: FlashMHF "
        f"{params['flashmhf']['total']:,}, SwiGLU {params['swiglu']['total']:,}).",
        f"Calibration tokens/s: {rates}; steps chosen: {steps}.",
        "",
        summary_table(compare_summaries),
        "",
        *comparison_lines(compare_summaries),
        "",
        f"Total wall time of this script: {time.perf_counter() - start:.0f} s.",
    ]
    (args.out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
