"""Train the small byte-level causal LM of mhfgen.lm with a FlashMHF or a SwiGLU FFN.

    PYTHONPATH=. python examples/train_lm.py --ffn both --steps 1000 --out runs/lm

Writes <out>/<run>.csv (the curves), <out>/loss.png (if matplotlib is installed),
<out>/summaries.json and prints a summary table. See docs/TRAINING.md.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace

import torch

from mhfgen.lm import ModelConfig, TrainConfig, load_corpus, matched_swiglu_intermediate
from mhfgen.lm.experiment import RunSpec, run_all
from mhfgen.lm.model import CausalLM, count_parameters
from mhfgen.lm.report import summary_table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ffn", choices=("flashmhf", "swiglu", "both"), default="both")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                   help="FlashMHF backend (auto: Triton kernels on CUDA, PyTorch elsewhere)")
    m = p.add_argument_group("model")
    m.add_argument("--d-model", type=int, default=512)
    m.add_argument("--layers", type=int, default=8)
    m.add_argument("--heads", type=int, default=8, help="attention heads")
    m.add_argument("--mhf-heads", type=int, default=4, help="FlashMHF heads")
    m.add_argument("--mhf-intermediate", type=int, default=1280)
    m.add_argument("--mhf-experts", type=int, default=5)
    m.add_argument("--swiglu-intermediate", type=int, default=None,
                   help="SwiGLU width (default: matched to FlashMHF's parameters)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--seq-len", type=int, default=512)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--eval-batches", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-seed", type=int, default=1234)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--no-bf16", action="store_true", help="train in fp32 on the GPU too")
    t.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each step's forward and backward from a CUDA graph "
                        "(mhfgen.lm.graphed; default: on for a CUDA device)")
    t.add_argument("--serve-fp8", action="store_true",
                   help="after training, FlashMHF runs measure their validation loss again "
                        "with FP8 expert weights (mhfgen.quantize_fp8_model)")
    t.add_argument("--max-seconds", type=float, default=None, help="wall-clock guard per run")
    d = p.add_argument_group("data")
    d.add_argument("--val-percent", type=float, default=5.0)
    d.add_argument("--max-bytes", type=int, default=None, help="read only this much text")
    p.add_argument("--out", default="runs/lm")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = ModelConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                       mhf_heads=args.mhf_heads, mhf_intermediate=args.mhf_intermediate,
                       mhf_experts=args.mhf_experts, swiglu_intermediate=args.swiglu_intermediate,
                       backend=args.backend, max_seq_len=max(args.seq_len, 16))
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                            lr=args.lr, warmup_steps=args.warmup, eval_every=args.eval_every,
                            eval_batches=args.eval_batches, seed=args.seed,
                            data_seed=args.data_seed, device=args.device, bf16=not args.no_bf16,
                            max_seconds=args.max_seconds,
                            cuda_graph=(args.device.startswith("cuda") if args.cuda_graph is None
                                        else args.cuda_graph))
    kinds = ("flashmhf", "swiglu") if args.ffn == "both" else (args.ffn,)
    specs = []
    for kind in kinds:
        cfg = replace(base, ffn=kind)
        with torch.device("meta"):
            params = count_parameters(CausalLM(cfg))
        width = (f"I={cfg.mhf_intermediate}, E={cfg.mhf_experts}, H={cfg.mhf_heads}"
                 if kind == "flashmhf" else
                 f"I={cfg.swiglu_intermediate or matched_swiglu_intermediate(cfg)}")
        print(f"{kind}: {params['total']:,} parameters ({params['ffn']:,} in FFNs; {width})")
        run_cfg = replace(train_cfg, serve_fp8=args.serve_fp8 and kind == "flashmhf")
        specs.append(RunSpec(kind if kind == "swiglu" else f"flashmhf-{args.backend}", cfg,
                             run_cfg))
    corpus = load_corpus(val_percent=args.val_percent, max_bytes=args.max_bytes)
    print(corpus.describe())
    summaries, _ = run_all(specs, corpus, args.out, title="byte-level LM on the Python stdlib",
                           progress=not args.no_progress)
    print(summary_table(summaries))
    if train_cfg.cuda_graph and args.device.startswith("cuda"):
        print("steps: forward and backward replayed from a CUDA graph (--no-cuda-graph: eager)")
    print(f"curves and summaries in {args.out}")


if __name__ == "__main__":
    main()
