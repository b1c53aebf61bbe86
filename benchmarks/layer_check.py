"""The whole FlashMHF layer on a GPU against float64: is mhfgen's layer as accurate as
PyTorch's own layer in the same dtype?

    python benchmarks/layer_check.py [--preset 1.3B] [--tokens 4096] [--dtype bfloat16]
    python benchmarks/layer_check.py --cpu-smoke      # the script's logic, interpreter

One FlashMHF layer is initialised once and copied three ways: float64 with the PyTorch
reference core (the truth), --dtype with the generated kernels (backend "triton": fused
norm + router kernels and the core's kernels), and --dtype with the PyTorch reference
(backend "torch": what the same layer costs in accuracy without mhfgen). Each runs the
same input and the same output gradient; printed: the relative Frobenius error of the
output, of the input's gradient and of every parameter's gradient against float64, for
both, and their ratio. mhfgen's core kernels are verified on their own by `mhfgen verify`;
this checks what the layer adds (TF32 router dots on a GPU, the analytic norm + router
backward) end to end. Verdict: every mhfgen error at most RATIO_BAR times PyTorch's, or
within the dtype's tolerance (mhfgen.tolerances).
"""

from __future__ import annotations

import argparse
import copy
import sys

import mhfgen  # first: switches Triton's interpreter on where there is no GPU

# isort: split
import torch

from mhfgen import FlashMHF
from mhfgen.presets import PRESETS
from mhfgen.spec import dtype_name
from mhfgen.tolerances import relative_error, tolerance

RATIO_BAR = 2.0


def run(layer: FlashMHF, x: torch.Tensor, dy: torch.Tensor) -> dict:
    """Output, input gradient and parameter gradients of one forward + backward."""
    layer.zero_grad(set_to_none=True)
    xx = x.detach().to(next(layer.parameters()).dtype).requires_grad_()
    y = layer(xx)
    y.backward(dy.to(y.dtype))
    out = {"output": y.detach(), "d input": xx.grad}
    out.update({f"d {name}": p.grad for name, p in layer.named_parameters()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="1.3B", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="a tiny layer through Triton's interpreter (checks the script)",
    )
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not gpu and not args.cpu_smoke:
        print("layer_check: needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if gpu else "cpu")
    dtype = getattr(torch, args.dtype)
    if gpu:
        p = PRESETS[args.preset]
        dims = (p.d_model, p.heads, p.intermediate, p.experts)
        batch, seqlen = max(1, args.tokens // 2048), min(args.tokens, 2048)
    else:
        dims, batch, seqlen, dtype = (64, 2, 128, 2), 2, 9, torch.float32
    torch.manual_seed(0)
    truth = FlashMHF(*dims, backend="torch", device=dev, dtype=torch.float64)
    kernels = copy.deepcopy(truth).to(dtype)
    kernels.backend = "triton"
    plain = copy.deepcopy(truth).to(dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, seqlen, dims[0], generator=g, dtype=torch.float64).to(dev)
    dy = torch.randn(batch, seqlen, dims[0], generator=g, dtype=torch.float64).to(dev)
    want, got, base = run(truth, x, dy), run(kernels, x, dy), run(plain, x, dy)

    name = args.preset if gpu else "smoke"
    where = torch.cuda.get_device_name(dev) if gpu else "INTERPRETER SMOKE RUN"
    print(
        f"{where}, torch {torch.__version__}, mhfgen {mhfgen.__version__}; FlashMHF layer "
        f"{name} (d, H, I, E) = {dims}, {batch * seqlen} tokens, {dtype_name(dtype)}"
    )
    print(f"  {'tensor':18} {'mhfgen':>9} {'PyTorch':>9} {'ratio':>7}  (relative error vs float64)")
    ok = True
    for key in want:
        e_k, e_t = relative_error(got[key], want[key]), relative_error(base[key], want[key])
        tol = tolerance(dtype, grad=key != "output")
        good = e_k <= max(RATIO_BAR * e_t, tol)
        ok &= good
        ratio = e_k / e_t if e_t else float("inf")
        print(f"  {key:18} {e_k:9.2e} {e_t:9.2e} {ratio:7.2f}  {'ok' if good else 'FAIL'}")
    print(
        f"  verdict: {'PASS' if ok else 'FAIL'} (each mhfgen error <= {RATIO_BAR:g}x "
        f"PyTorch's or <= the dtype's tolerance)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
