"""Deterministic gradients on a GPU: bitwise reproducibility and what it costs, one run.

    python3 benchmarks/bwd_determinism.py [--tokens 16384]

For the 1.3B, 370M and (H16, D64) shapes in bf16: the backward as dispatched (the one
pass or the split pair, whichever the databases say is faster) and the deterministic
backward (torch.use_deterministic_algorithms(True): the split pair, dK/dU/dV without
token splits), each run three times on the same inputs. Prints whether the runs are
bitwise identical, the median time of each (triton.testing.do_bench) and the ratio.
"""

from __future__ import annotations

import argparse

import torch
import triton

from mhfgen import dispatch, kernels
from mhfgen.kernels.configs import spec_of
from mhfgen.validation import check_flash_mhf_inputs
from mhfgen.verification import Case, make_inputs

SHAPES = {
    "1.3B": (16, 16, 128, 22, 256),
    "370M": (8, 8, 128, 11, 256),
    "H16D64": (16, 16, 64, 11, 256),
}


def identical(runs) -> bool:
    first = runs[0]
    return all(torch.equal(a, b) for other in runs[1:] for a, b in zip(first, other))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    rows = []
    for name, (H, Hkv, D, E, De) in SHAPES.items():
        case = Case(name, args.tokens // 2048, 2048, H, Hkv, D, E, De)
        inputs = make_inputs(case, torch.bfloat16, "cuda")
        spec = spec_of(check_flash_mhf_inputs(*inputs[:5]), inputs[0])
        form = dispatch.backward_form(spec, case.tokens, inputs[0].device)
        out = {}
        for mode in ("dispatched", "deterministic"):
            torch.use_deterministic_algorithms(mode == "deterministic")
            try:
                runs = [kernels.backward(*inputs) for _ in range(3)]
                same = identical(runs)
                ms = triton.testing.do_bench(lambda: kernels.backward(*inputs), warmup=10, rep=40)
            finally:
                torch.use_deterministic_algorithms(False)
            out[mode] = (same, ms)
            del runs
        flops = 2 * case.tokens * H * E * De * D * 6  # the backward's 12 T H I D
        rows.append(
            (
                name,
                form,
                *(f"{'yes' if out[m][0] else 'no'}" for m in out),
                f"{out['dispatched'][1]:.3f}",
                f"{out['deterministic'][1]:.3f}",
                f"{flops / out['dispatched'][1] / 1e9:.0f}",
                f"{flops / out['deterministic'][1] / 1e9:.0f}",
                f"{out['deterministic'][1] / out['dispatched'][1]:.2f}x",
            )
        )
        print(*rows[-1], flush=True)
    print(
        "\n| shape | dispatched form | dispatched bitwise-reproducible | deterministic "
        "bitwise-reproducible | dispatched ms | deterministic ms | dispatched TFLOP/s | "
        "deterministic TFLOP/s | cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("|", " | ".join(r), "|")


if __name__ == "__main__":
    main()
