"""Host time of the FlashMHF training path: per call of each launcher and per LM step.

A small model's training step is bound by the host (docs/PERFORMANCE.md, "End to end"): the
GPU finishes a step's kernels before Python has enqueued the next. This measures the
Python time of each call on the LM's FlashMHF shape (16384 tokens, 4 heads of 128, I =
1280, E = 5, bf16), the median over --calls calls, each call synchronised after it is
timed, so the GPU never holds the host back:

- `forward`, `backward`: mhfgen.kernels.forward and .backward (the dispatched launchers);
- `flash_mhf fwd+bwd (eager)`: mhfgen.flash_mhf with gradients and its backward, as a model
  calls it; `(custom op)`: the same through the op `mhfgen::flash_mhf` and its registered
  autograd, as torch.compile sees it;
- `norm_router fwd`, `norm_router bwd`: the fused norm/router launchers;
- on a GPU, `lm step`: one training step of mhfgen.lm's default model with each FFN,
  eager and with its forward and backward replayed from a CUDA graph (mhfgen.lm.graphed):
  its wall time (synchronised) and the host time to enqueue it.

`--stub` runs without a GPU: the specs are planned as for sm90 and every kernel launch is
stubbed out, so what is timed is mhfgen's and PyTorch's Python alone (fp16 CPU tensors;
no LM step). On a GPU, run it twice, once with MHFGEN_JIT_LAUNCH=1 (every launch through
JITFunction.run), to see what reusing the compiled binaries saves.

    python3 benchmarks/host_time.py --json host.json          # CUDA GPU
    python3 benchmarks/host_time.py --stub                    # any machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

#: the LM's FlashMHF problem: B, L, H, D, E, De
SHAPE = (32, 512, 4, 128, 5, 256)


def _stub_launches() -> None:
    """Plan for sm90 on the CPU and launch nothing (the Python path alone)."""
    from mhfgen import device
    from mhfgen.kernels.launch import DirectLaunch

    device.target = lambda _device: "sm90"
    DirectLaunch._launch = lambda self, tensors, dev: None


def _median_us(fn, calls: int, sync) -> float:
    for _ in range(5):
        fn()
    sync()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        sync()
    return statistics.median(times) * 1e6


def launcher_times(dev: torch.device, dtype: torch.dtype, calls: int) -> dict[str, float]:
    import mhfgen
    from mhfgen.kernels import backward, forward
    from mhfgen.kernels.norm_router import norm_router_bwd, norm_router_fwd
    from mhfgen.ops import _flash_mhf_op

    B, L, H, D, E, De = SHAPE
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev, dtype)

    q, do = randn(B, L, H, D), randn(B, L, H, D)
    k, u, v = (randn(H, E, De, D, scale=D**-0.5) for _ in range(3))
    r = torch.softmax(torch.randn(B, L, H, E, generator=g), -1).to(dev)
    nw, wr = torch.ones(H, D, device=dev, dtype=dtype), randn(H, D, E)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, u, v, r)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def eager():
        mhfgen.flash_mhf(*leaves).backward(do)
        for t in leaves:  # fresh gradients each call, as after optimizer.zero_grad()
            t.grad = None

    def op():
        _flash_mhf_op(*leaves).backward(do)
        for t in leaves:
            t.grad = None

    return {
        "forward": _median_us(lambda: forward(q, k, u, v, r), calls, sync),
        "backward": _median_us(lambda: backward(q, k, u, v, r, do), calls, sync),
        "flash_mhf fwd+bwd (eager)": _median_us(eager, calls, sync),
        "flash_mhf fwd+bwd (custom op)": _median_us(op, calls, sync),
        "norm_router fwd": _median_us(lambda: norm_router_fwd(q, nw, wr), calls, sync),
        "norm_router bwd": _median_us(lambda: norm_router_bwd(q, nw, wr, q, r), calls, sync),
    }


def lm_steps(steps: int) -> dict[str, dict[str, float]]:
    """ms per training step (synchronised) and the host time to enqueue one step, of each
    FFN's model with eager steps and with forward + backward replayed from a CUDA graph
    (mhfgen.lm.graphed)."""
    from mhfgen.lm.graphed import GraphedStep
    from mhfgen.lm.model import CausalLM, ModelConfig
    from mhfgen.lm.train import TrainConfig, make_optimizer, train_step

    dev = torch.device("cuda")
    out = {}
    for ffn in ("flashmhf", "swiglu"):
        for graph in (False, True):
            torch.manual_seed(0)
            model = CausalLM(ModelConfig(ffn=ffn, max_seq_len=512)).to(dev)
            cfg = TrainConfig(device="cuda")
            opt = make_optimizer(model, cfg)
            graphed = GraphedStep(model, torch.bfloat16) if graph else None
            x = torch.randint(0, 256, (cfg.batch_size, cfg.seq_len), device=dev)
            for s in range(10):
                train_step(model, opt, x, x, s, cfg, graphed)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for s in range(steps):
                train_step(model, opt, x, x, s, cfg, graphed)
            torch.cuda.synchronize()
            step_ms = (time.perf_counter() - start) / steps * 1e3
            enqueue = []
            for s in range(5):
                start = time.perf_counter()
                train_step(model, opt, x, x, s, cfg, graphed)
                enqueue.append(time.perf_counter() - start)
                torch.cuda.synchronize()
            name = f"{ffn}, {'graphed' if graph else 'eager'}"
            out[name] = {"step_ms": step_ms, "enqueue_ms": statistics.median(enqueue) * 1e3}
            del model, opt, graphed
    return out


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\n\n")[0]
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--stub", action="store_true", help="no GPU: stub the launches out")
    ap.add_argument("--calls", type=int, default=50, help="timed calls per entry (default 50)")
    ap.add_argument("--steps", type=int, default=30, help="timed LM steps (default 30)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)
    if args.stub:
        _stub_launches()
        dev, dtype = torch.device("cpu"), torch.float16
    elif torch.cuda.is_available():
        dev, dtype = torch.device("cuda"), torch.bfloat16
    else:
        ap.error("no CUDA GPU: pass --stub to time the Python path with the launches stubbed")
    doc = {
        "device": "CPU, launches stubbed" if args.stub else torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "jit_launch": os.environ.get("MHFGEN_JIT_LAUNCH", ""),
        "shape (B, L, H, D, E, De)": SHAPE,
        "host_us_per_call": launcher_times(dev, dtype, args.calls),
    }
    if not args.stub:
        doc["lm_step"] = lm_steps(args.steps)
    for name, us in doc["host_us_per_call"].items():
        print(f"{name:32s} {us:8.1f} us")
    for ffn, figures in doc.get("lm_step", {}).items():
        print(
            f"lm step, {ffn:18s} {figures['step_ms']:7.2f} ms, enqueue {figures['enqueue_ms']:.2f} ms"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
