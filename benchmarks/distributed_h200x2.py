"""FlashMHF in distributed training on two GPUs: parity of DDP, FSDP2 and tensor parallelism
against one process, and the 1.3B layer's training step at tensor-parallel degree 2.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        benchmarks/distributed_h200x2.py [--json OUT.json]
    ... benchmarks/distributed_h200x2.py --tiny   # the same code on CPUs (gloo, interpreter)

Each rank takes cuda:LOCAL_RANK with NCCL where CUDA is available, else the CPU with gloo
(mhfgen.parallel.launch.init_process_group); every path below runs on both.

Parity (mhfgen.parallel.parity; relative Frobenius errors against one process on the same
device, from the same weights and data):
  ddp, fsdp2, tp  SGD steps of mhfgen.lm's CausalLM (tp: every FFN sharded by heads with
               the HeadParallel style), fp32 (the wrappers change only how sums are
               ordered, which fp32 shows at 1e-7), eager and with every block compiled;
               the FlashMHF layers run the generated kernels (backend "triton")
  tp-layer     one FlashMHF sharded by heads (parallelize_flashmhf) against the unsharded
               layer, fp32 and bf16: output, input gradient, every parameter gradient

Figure: one training step (forward + backward, no optimizer) of the 1.3B preset's layer,
FlashMHF(2048, 16, 5632, 22) in bf16 on batch x seq = 8 x 2048 tokens, as
  1 GPU   the whole layer on each GPU alone (both GPUs at once, no communication)
  TP=2    the layer sharded by heads over both GPUs (8 heads each; one all-reduce of y
          forward, one of dx backward, 64 MiB each in bf16)
The input requires its gradient, as a layer's input in a model does. tokens/s = batch x
seq / step time (median of --repeats timings of --steps steps, each the slowest rank's,
after --warmup steps); peak memory = torch.cuda.max_memory_allocated per GPU over the
timed steps, weights, gradients and activations included. The dispatcher's choices are logged:
the TP ranks run an 8-head problem, which the shipped tuning database may not hold (then
the built-in heuristic config; no log line).

The table is printed after the figure and again, complete, after the compiled checks.
Exit status 1 if a parity check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import mhfgen  # first: switches Triton's interpreter on where there is no GPU

# isort: split
import torch
import torch.distributed as dist

from mhfgen import FlashMHF
from mhfgen.lm.model import ModelConfig
from mhfgen.parallel import parallelize_flashmhf
from mhfgen.parallel.launch import init_process_group
from mhfgen.parallel.parity import (
    LMCase,
    ParityResult,
    TPCase,
    lm_step_parity,
    tiny_lm_case,
    tp_layer_parity,
)


@dataclass(frozen=True)
class FigureCase:
    """The layer and tokens of the figure; --tiny replaces it with a CPU-sized one."""

    d_model: int = 2048
    n_heads: int = 16
    intermediate_size: int = 5632
    n_experts: int = 22
    batch: int = 8
    seq: int = 2048
    dtype: str = "bfloat16"
    backend: str = "auto"

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@dataclass
class FigureRow:
    """One mode's timing: step time (ms, median over timings of the slowest rank), every
    timing (ms, for the noise), tokens/s and peak memory per GPU (MiB, None on the CPU)."""

    mode: str
    degree: int
    step_ms: float
    timings_ms: list[float]
    tokens_per_s: float
    peak_mib: list[float | None]


def gpu_lm_case() -> LMCase:
    """The GPU parity model: two blocks, FlashMHF with D = 128 through the kernels."""
    cfg = ModelConfig(
        d_model=256,
        n_layers=2,
        n_heads=4,
        mhf_heads=2,
        mhf_intermediate=512,
        mhf_experts=2,
        max_seq_len=256,
        backend="triton",
    )
    return LMCase(cfg, batch=4, seq=256, steps=2, lr=0.5)


def gpu_tp_case() -> TPCase:
    """The GPU tensor-parallel parity layer: H = 8, Hkv = 4, D = 128, E = 4, De = 256."""
    return TPCase(
        d_model=1024, n_heads=8, intermediate_size=1024, n_experts=4, n_kv_heads=4, batch=2, seq=512
    )


def parity_checks(device: torch.device, tiny: bool, compiled: bool) -> list[ParityResult]:
    """The DDP, FSDP2 and TP steps of the model (eager or compiled) and, eager only, the TP
    layer checks."""
    lm_case = tiny_lm_case("triton") if tiny else gpu_lm_case()
    results = [
        lm_step_parity(wrapper, lm_case, device, compiled=compiled)
        for wrapper in ("ddp", "fsdp2", "tp")
    ]
    if not compiled:
        tp_case = TPCase() if tiny else gpu_tp_case()
        results.append(tp_layer_parity(tp_case, device, torch.float32, backend="triton"))
        # NOTE: Triton's interpreter cannot multiply bf16 (it multiplies the raw bits), so on
        # the CPU the bf16 check runs the layer's PyTorch path; on a GPU, the kernels
        results.append(
            tp_layer_parity(tp_case, device, torch.bfloat16, backend="torch" if tiny else "triton")
        )
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training_step(
    layer: FlashMHF, x: torch.Tensor, dy: torch.Tensor, warmup: int, steps: int, repeats: int
) -> tuple[list[float], float | None]:
    """Seconds of one forward + backward of `layer` (gradients, dx included, freed each
    step; x must require its gradient), one value per timing of `steps` steps, and the peak
    memory in MiB over the timed steps (None on the CPU). Every rank calls it at the same
    time; a barrier starts each timing."""
    device = x.device

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        # NOTE: (y * dy).sum() rather than y.backward(dy) (the same gradients): it reads y,
        # as the next layer of a model would, which waits for TP's all-reduce of y (left
        # unread, that all-reduce is never waited on: torch warns at exit)
        (layer(x) * dy).sum().backward()

    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        dist.barrier()
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        times.append((time.perf_counter() - start) / steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return times, peak


def figure(
    device: torch.device, case: FigureCase, warmup: int, steps: int, repeats: int
) -> list[FigureRow]:
    """The 1-GPU and TP rows of the figure (every rank returns the same rows)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    dtype = getattr(torch, case.dtype)
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, case.seq, case.d_model, generator=data).to(device, dtype)
    dy = torch.randn(x.shape, generator=data).to(device, dtype)
    x.requires_grad_()

    def new_layer() -> FlashMHF:
        torch.manual_seed(0)
        return FlashMHF(
            case.d_model,
            case.n_heads,
            case.intermediate_size,
            case.n_experts,
            backend=case.backend,
            device=device,
            dtype=dtype,
        )

    rows = []
    for mode, degree in (("1 GPU", 1), (f"TP={world}", world)):
        layer = new_layer()
        if degree > 1:
            parallelize_flashmhf(layer, init_device_mesh(device.type, (world,)))
        times, peak = time_training_step(layer, x, dy, warmup, steps, repeats)
        # every rank's figures: per timing the slowest rank, each GPU's peak memory
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (times, peak))
        slowest = [max(per_rank[i] for per_rank, _ in gathered) for i in range(repeats)]
        seconds = statistics.median(slowest)
        rows.append(
            FigureRow(
                mode,
                degree,
                seconds * 1e3,
                [t * 1e3 for t in slowest],
                case.tokens / seconds,
                [p for _, p in gathered],
            )
        )
        del layer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def table(
    parity: list[ParityResult], rows: list[FigureRow], case: FigureCase, device: torch.device
) -> str:
    """The closing table: one line per parity check, then the figure."""
    lines = ["parity against one process (relative Frobenius error, worst quantity):"]
    lines += [f"  {r.describe()}" for r in parity]
    lines.append(
        f"training step (fwd + bwd) of FlashMHF({case.d_model}, {case.n_heads}, "
        f"{case.intermediate_size}, {case.n_experts}) {case.dtype}, "
        f"{case.batch} x {case.seq} tokens, {device.type}:"
    )
    lines.append(
        f"  {'mode':7s} {'step ms':>9s} {'min-max ms':>15s} {'tokens/s':>11s} "
        f"{'speedup':>8s} {'peak MiB per GPU':>20s}"
    )
    base = rows[0].step_ms if rows else None
    for row in rows:
        peaks = " / ".join(_mib(p) for p in row.peak_mib)
        spread = f"{min(row.timings_ms):.2f}-{max(row.timings_ms):.2f}"
        lines.append(
            f"  {row.mode:7s} {row.step_ms:9.2f} {spread:>15s} "
            f"{row.tokens_per_s:11,.0f} {base / row.step_ms:7.2f}x {peaks:>20s}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiny", action="store_true", help="CPU-sized models and layer (what the CPU test runs)"
    )
    ap.add_argument("--json", help="write the parity errors and the figure here (rank 0)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    ap.add_argument("--steps", type=int, default=10, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=5, help="timings (the median is kept)")
    ap.add_argument(
        "--no-compiled", action="store_true", help="leave out the compiled DDP, FSDP2 and TP checks"
    )
    args = ap.parse_args(argv)
    if "RANK" not in os.environ:
        print(
            "distributed_h200x2: run it under torchrun: python -m torch.distributed.run "
            "--standalone --nproc_per_node 2 benchmarks/distributed_h200x2.py",
            file=sys.stderr,
        )
        return 2
    device = init_process_group()
    rank = dist.get_rank()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if rank == 0:
        logging.getLogger("mhfgen.dispatch").setLevel(logging.DEBUG)
    case = FigureCase()
    if args.tiny:
        case = replace(
            case,
            d_model=64,
            n_heads=4,
            intermediate_size=64,
            n_experts=2,
            batch=2,
            seq=8,
            dtype="float32",
            backend="triton",
        )
    if rank == 0:
        print(
            f"torch {torch.__version__}, mhfgen {mhfgen.__version__}, "
            f"{dist.get_world_size()} ranks on {device.type} ({dist.get_backend()})"
            + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
            flush=True,
        )

    def stage(name: str, fn):
        start = time.perf_counter()
        out = fn()
        if rank == 0:
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
        return out

    parity = stage("parity, eager", lambda: parity_checks(device, args.tiny, compiled=False))
    rows = stage("figure", lambda: figure(device, case, args.warmup, args.steps, args.repeats))
    report(parity, rows, case, device, args.json)
    if not args.no_compiled:
        # last: the slowest part (inductor compiles the blocks); what came before is printed
        parity += stage("parity, compiled", lambda: parity_checks(device, args.tiny, compiled=True))
        report(parity, rows, case, device, args.json)
    dist.destroy_process_group()
    return 1 if any(not r.ok for r in parity) else 0


def report(
    parity: list[ParityResult],
    rows: list[FigureRow],
    case: FigureCase,
    device: torch.device,
    json_path: str | None,
) -> None:
    """Rank 0 prints the table and writes the JSON (again after each stage)."""
    if dist.get_rank() != 0:
        return
    print(table(parity, rows, case, device), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "device": device.type,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__,
                    "mhfgen": mhfgen.__version__,
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "case": asdict(case),
                    "parity": [{**asdict(r), "ok": r.ok} for r in parity],
                    "figure": [asdict(row) for row in rows],
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    sys.exit(main())
