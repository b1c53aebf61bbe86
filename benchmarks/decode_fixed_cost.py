"""What a decode call costs beyond streaming its weights: the forward's time per call over
the weights' bytes, fitted to a line.

    python benchmarks/decode_fixed_cost.py [--tokens 1,8] [--experts 2,6,11,22,44]
                                           [--weights dense,fp8] [--json FILE]

The 1.3B layout (16 heads of 128, 256-row experts) with E experts reads 3 * 16 * 256 E
rows of weights per call, so E scales the bytes and nothing else. Each point is the
`mhfgen bench --suite decode` measurement (mhfgen.bench_decode.measure: the dispatcher's
choice, a CUDA graph of calls each on its own copy of the weights); per (weights, tokens)
a least-squares line t = fixed + bytes / rate gives the marginal rate (TB/s: how fast
the kernel streams weights once it runs) and the fixed cost (us: launch, the pipeline's
ramp-up, the last tile's chain and the split reduction). Also in the same run: the copy
bandwidth, and a graph of empty launches of one program per SM (the launch floor of a
call inside a graph).

A share of copy bandwidth B at W bytes needs fixed <= W / B' - W / rate, B' the share of
the copy's rate; docs/PERFORMANCE.md ("Decode and FP8 weights") states the bars this way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from types import SimpleNamespace

import mhfgen  # noqa: F401  (first: switches Triton's interpreter on where there is no GPU)

# isort: split
import torch
import triton

from mhfgen.bench import environment
from mhfgen.bench_decode import copy_bandwidth, measure
from mhfgen.graph_timing import graph_ms
from mhfgen.spec import KernelSpec

HEADS, HEAD_DIM, EXPERT_DIM = 16, 128, 256
#: how every point is timed (mhfgen.bench_decode)
TIMER = "CUDA graph of calls, each on its own copy of the weights; median replay per call"
#: launches in the graph that times an empty kernel
EMPTY_LAUNCHES = 200


@triton.jit
def _empty(x):
    """Does nothing: what a launch costs inside a CUDA graph."""


def launch_floor_us(device) -> float:
    """Microseconds per launch of an empty one-program-per-SM kernel in a CUDA graph."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    x = torch.zeros(1, device=device)
    calls = [lambda: _empty[(sms,)](x)] * EMPTY_LAUNCHES
    return graph_ms(calls) / EMPTY_LAUNCHES * 1e3


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x for points (x, y)."""
    slope, intercept = statistics.linear_regression(*zip(*points))
    return intercept, slope


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,8", help="comma list of token counts")
    parser.add_argument("--experts", default="2,6,11,22,44", help="comma list of E (>= 2 of them)")
    parser.add_argument("--weights", default="dense,fp8", help="comma list of dense and fp8")
    parser.add_argument("--json", help="write the points and the fits to this file")
    args = parser.parse_args(argv)
    experts = [int(e) for e in args.experts.split(",")]
    if len(set(experts)) < 2:
        parser.error("--experts needs at least two distinct counts to fit a line")
    if not torch.cuda.is_available():
        print("decode_fixed_cost.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    copy_bps = copy_bandwidth(device)
    floor = launch_floor_us(device)
    print(f"copy bandwidth {copy_bps / 1e12:.2f} TB/s; an empty launch in a graph {floor:.2f} us")
    points, fits = [], []
    for weights in args.weights.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            line = []
            for e in experts:
                spec = KernelSpec(HEADS, HEADS, HEAD_DIM, e, EXPERT_DIM, "bfloat16", "sm90")
                row = measure(f"E={e}", spec, tokens, weights, device, copy_bps)
                line.append((row.weight_bytes / 1e6, row.us))
                points.append({**asdict(row), "experts": e})
                print(
                    f"{weights:5} T={tokens:<3} E={e:<3} {row.weight_bytes / 1e6:7.1f} MB "
                    f"{row.us:8.2f} us  {row.of_copy:6.1%} of copy  {row.config}",
                    flush=True,
                )
            fixed, us_per_mb = fit(line)
            fits.append(
                dict(
                    weights=weights,
                    tokens=tokens,
                    fixed_us=round(fixed, 2),
                    marginal_tb_per_s=round(1 / us_per_mb, 3),
                )
            )
            print(f"  fit: {1 / us_per_mb:.2f} TB/s marginal, {fixed:.2f} us fixed per call")
    if args.json:
        out = dict(
            environment=environment(device, SimpleNamespace(label=TIMER)),
            copy_tb_per_s=round(copy_bps / 1e12, 3),
            empty_launch_us=round(floor, 2),
            points=points,
            fits=fits,
        )
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
