"""The layer's RMSNorm + router on a GPU: fused Triton kernels against the PyTorch path.

    python benchmarks/norm_router_check.py [--preset 1.3B] [--tokens 16384] [--sweep]
    python benchmarks/norm_router_check.py --heads 8 --head-dim 256 --experts 32 --sweep

For q (B, L, H, D) in bf16 (the in-projection's output; --dtype) and fp32 weights, prints the
relative Frobenius error of the kernels' qn, R, dq, d(norm weight) and d(router weight)
against the PyTorch path (mhfgen.norm_router with use_kernels=False, fp32 math), both
computed from the same inputs and output gradients; then the median time of the forward
and of forward + backward of each path (triton.testing.do_bench) and the peak memory of
forward + backward above the inputs.
"""

from __future__ import annotations

import argparse
import sys

# isort: split
import torch
import triton

from mhfgen.norm_router import norm_router
from mhfgen.presets import PRESETS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _timed(fn) -> float | str:
    """Median ms of fn, or the exception's name (out of resources: report and go on)."""
    try:
        fn()
        return triton.testing.do_bench(fn, return_mode="median")
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


def _sweep(q, w, wr, dqn, dr, ref) -> None:
    """Forward and backward kernel launches side by side: ms, and the errors of R (forward)
    and of dq, dW_R (backward) against the PyTorch path's `ref`."""
    import itertools

    from mhfgen.kernels.norm_router import norm_router_bwd, norm_router_fwd

    q, w, wr = q.detach(), w.detach(), wr.detach()
    grid = list(itertools.product((16, 32, 64), (4, 8), ("ieee", "tf32x3", "tf32")))
    for name in ("forward", "backward"):
        print(
            f"  {name} kernel sweep (block_t, warps, precision): ms, errors vs the PyTorch path",
            flush=True,
        )
        rows = []
        for bt, warps, prec in grid:
            launch = dict(block_t=bt, num_warps=warps, precision=prec)
            if name == "forward":
                fn = lambda: norm_router_fwd(q, w, wr, launch)  # noqa: E731
            else:
                fn = lambda: norm_router_bwd(q, w, wr, dqn, dr, launch)  # noqa: E731
            ms = _timed(fn)
            if isinstance(ms, str):
                print(f"    {bt:3} {warps} {prec}: {ms}", flush=True)
                continue
            out = fn()
            errs = (
                f"R {_rel(out[1], ref[1]):.1e}"
                if name == "forward"
                else f"dq {_rel(out[0], ref[2]):.1e}  dW_R {_rel(out[2], ref[4]):.1e}"
            )
            rows.append((ms, bt, warps, prec, errs))
            print(f"    {bt:3} {warps} {prec:6}: {ms:.3f} ms  {errs}", flush=True)
        for ms, bt, warps, prec, errs in sorted(rows)[:3]:
            print(f"  fastest {name}: {bt:3} {warps} {prec:6}: {ms:.3f} ms  {errs}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="1.3B", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=None, help="H (default: the preset's)")
    ap.add_argument("--head-dim", type=int, default=None, help="D (default: the preset's)")
    ap.add_argument("--experts", type=int, default=None, help="E (default: the preset's)")
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="q's dtype (the weights stay fp32)",
    )
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="also time the forward and backward kernels over block_t, num_warps "
        "and dot precision, with the errors of each against the PyTorch path",
    )
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("norm_router_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    p, dev = PRESETS[args.preset], torch.device("cuda")
    H, D, E = args.heads or p.heads, args.head_dim or p.head_dim, args.experts or p.experts
    custom = (H, D, E) != (p.heads, p.head_dim, p.experts)
    label = f"H={H} D={D} E={E}" if custom else f"{args.preset} H={H} D={D} E={E}"
    g = torch.Generator(device="cpu").manual_seed(0)
    q = (
        torch.randn(args.tokens // 2048 or 1, min(args.tokens, 2048), H, D, generator=g)
        .to(dev, getattr(torch, args.dtype))
        .requires_grad_()
    )
    w = (1 + 0.1 * torch.randn(H, D, generator=g)).to(dev).requires_grad_()
    wr = (0.05 * torch.randn(H, D, E, generator=g)).to(dev).requires_grad_()
    dqn = torch.randn(q.shape, generator=g).to(dev, q.dtype)
    dr = torch.randn(*q.shape[:3], E, generator=g).to(dev)

    outs = {}
    for name, kern in (("kernels", True), ("pytorch", False)):
        qn, r = norm_router(q, w, wr, use_kernels=kern)
        grads = torch.autograd.grad((qn, r), (q, w, wr), (dqn, dr))
        outs[name] = (qn, r, *grads)
    print(
        f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton "
        f"{triton.__version__}; {label}, {q.shape[0] * q.shape[1]} "
        f"tokens, q {args.dtype}, weights fp32"
    )
    for i, label in enumerate(("qn", "R", "dq", "d norm weight", "d router weight")):
        print(
            f"  {label:16} kernels vs PyTorch path: {_rel(outs['kernels'][i], outs['pytorch'][i]):.2e}"
        )
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
        print(
            f"  {name:8} forward {t_f:.3f} ms, forward + backward {t_fb:.3f} ms, "
            f"peak {peak:.0f} MiB above the inputs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
