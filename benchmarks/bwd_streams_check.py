"""The split backward's two kernels on one stream or two, on a GPU, one run.

    python3 benchmarks/bwd_streams_check.py [--tokens 16384]

For the 1.3B, 370M, (H16, D64) and 1.3B-with-4-kv-heads shapes in bf16: mhfgen.kernels.backward
as dispatched with MHFGEN_BACKWARD_STREAMS=1 (dQ/dR, then dK/dU/dV, on the caller's
stream) and with two streams (dQ/dR on a side stream beside dK/dU/dV). Checks that both
give bitwise the same gradients, within the bar against float64, then prints the median
times (triton.testing.do_bench) and the backward's TFLOP/s (12 T H I D).
"""

from __future__ import annotations

import argparse
import os

import torch
import triton

from mhfgen import kernels
from mhfgen.kernels.dispatched import STREAMS_ENV
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.verification import Case, make_inputs, reference_outputs

SHAPES = {
    "1.3B": (16, 16, 128, 22, 256),
    "370M": (8, 8, 128, 11, 256),
    "H16D64": (16, 16, 64, 11, 256),
    "1.3B-gqa4": (16, 4, 128, 22, 256),
}
GRADS = ("dq", "dr", "dk", "du", "dv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    bar = tolerance(torch.bfloat16, grad=True)
    print(
        "| shape | one stream ms | two streams ms | speed-up | bwd TFLOP/s (two) "
        "| bitwise same | max error |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (H, Hkv, D, E, De) in SHAPES.items():
        case = Case(name, args.tokens // 2048, 2048, H, Hkv, D, E, De)
        inputs = make_inputs(case, torch.bfloat16, "cuda")
        times, grads = {}, {}
        for mode in ("1", "2"):
            os.environ[STREAMS_ENV] = mode
            grads[mode] = kernels.backward(*inputs)
            torch.cuda.synchronize()
            times[mode] = triton.testing.do_bench(
                lambda: kernels.backward(*inputs), warmup=10, rep=60
            )
        os.environ.pop(STREAMS_ENV)
        same = all(torch.equal(a, b) for a, b in zip(grads["1"], grads["2"]))
        ref = reference_outputs(*inputs)
        err = max(relative_error(g, ref[n]) for n, g in zip(GRADS, grads["2"]))
        flops = 12 * case.tokens * H * E * De * D
        print(
            f"| {name} | {times['1']:.3f} | {times['2']:.3f} | {times['1'] / times['2']:.3f}x "
            f"| {flops / times['2'] / 1e9:.0f} | {'yes' if same else 'NO'} "
            f"| {err:.2e} {'ok' if err <= bar else 'FAIL'} |",
            flush=True,
        )
        inputs = grads = ref = None  # free the GPU memory before the next shape
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
