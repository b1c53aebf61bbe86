"""The layer's RMSNorm + router on a GPU: fused Triton kernels against the PyTorch path.

    python benchmarks/norm_router_check.py [--preset 1.3B] [--tokens 16384]

For q (B, L, H, D) in bf16 (the in-projection's output) and fp32 weights, prints the
relative Frobenius error of the kernels' qn, R, dq, d(norm weight) and d(router weight)
against the PyTorch path (mhfgen.norm_router with use_kernels=False, fp32 math), both
computed from the same inputs and output gradients; then the median time of the forward
and of forward + backward of each path (triton.testing.do_bench) and the peak memory of
forward + backward above the inputs.
"""
from __future__ import annotations

import argparse
import sys

import mhfgen  # first: Triton's interpreter switch
import torch
import triton

from mhfgen.norm_router import norm_router
from mhfgen.presets import PRESETS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _sweep(q, w, wr, dqn, dr, ref) -> None:
    """Backward kernel launches side by side: ms and errors of dq, dW_R against `ref`."""
    import itertools

    from mhfgen.kernels.norm_router import norm_router_bwd

    print("  backward kernel sweep (block_t, warps, splits per head, precision): ms, "
          "errors of dq / dW_R vs the PyTorch path")
    rows = []
    for bt, warps, splits, prec in itertools.product((16, 32, 64), (2, 4, 8), (16, 66),
                                                     ("ieee", "tf32")):
        launch = dict(block_t=bt, num_warps=warps, splits=splits, precision=prec)
        try:
            dq, _, dwr = norm_router_bwd(q.detach(), w.detach(), wr.detach(), dqn, dr, launch)
            ms = triton.testing.do_bench(
                lambda: norm_router_bwd(q.detach(), w.detach(), wr.detach(), dqn, dr, launch),
                return_mode="median")
        except Exception as exc:  # noqa: BLE001 - out of resources: report and go on
            print(f"    {bt:3} {warps} {splits:3} {prec}: {type(exc).__name__}", flush=True)
            continue
        rows.append((ms, bt, warps, splits, prec, _rel(dq, ref[2]), _rel(dwr, ref[4])))
    for ms, bt, warps, splits, prec, e_dq, e_dwr in sorted(rows):
        print(f"    {bt:3} {warps} {splits:3} {prec:4}: {ms:.3f} ms  dq {e_dq:.1e}  dW_R {e_dwr:.1e}",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="1.3B", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--sweep", action="store_true",
                    help="also time the backward kernel over block_t, num_warps, splits and "
                         "dot precision, with the errors of each against the PyTorch path")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("norm_router_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    p, dev = PRESETS[args.preset], torch.device("cuda")
    H, D, E = p.heads, p.head_dim, p.experts
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(args.tokens // 2048 or 1, min(args.tokens, 2048), H, D, generator=g
                    ).to(dev, torch.bfloat16).requires_grad_()
    w = (1 + 0.1 * torch.randn(H, D, generator=g)).to(dev).requires_grad_()
    wr = (0.05 * torch.randn(H, D, E, generator=g)).to(dev).requires_grad_()
    dqn = torch.randn(q.shape, generator=g).to(dev, torch.bfloat16)
    dr = torch.randn(*q.shape[:3], E, generator=g).to(dev)

    outs = {}
    for name, kern in (("kernels", True), ("pytorch", False)):
        qn, r = norm_router(q, w, wr, use_kernels=kern)
        grads = torch.autograd.grad((qn, r), (q, w, wr), (dqn, dr))
        outs[name] = (qn, r, *grads)
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton "
          f"{triton.__version__}; {args.preset} H={H} D={D} E={E}, {q.shape[0] * q.shape[1]} "
          f"tokens, q bf16, weights fp32")
    for i, label in enumerate(("qn", "R", "dq", "d norm weight", "d router weight")):
        print(f"  {label:16} kernels vs PyTorch path: {_rel(outs['kernels'][i], outs['pytorch'][i]):.2e}")
    if args.sweep:
        _sweep(q, w, wr, dqn, dr, outs["pytorch"])
    del outs
    for name, kern in (("kernels", True), ("pytorch", False)):
        def fwd():
            with torch.no_grad():
                norm_router(q, w, wr, use_kernels=kern)

        def fwdbwd():
            qn, r = norm_router(q, w, wr, use_kernels=kern)
            torch.autograd.grad((qn, r), (q, w, wr), (dqn, dr))

        t_f = triton.testing.do_bench(fwd, return_mode="median")
        t_fb = triton.testing.do_bench(fwdbwd, return_mode="median")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwdbwd()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        print(f"  {name:8} forward {t_f:.3f} ms, forward + backward {t_fb:.3f} ms, "
              f"peak {peak:.0f} MiB above the inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
