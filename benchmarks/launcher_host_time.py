"""Host time of the forward launcher itself, with the kernel launch stubbed out.

Runs anywhere (no GPU needed): it measures mhfgen's own Python work per call (plan lookup,
output allocation, argument packing), the part of the dispatch overhead that mhfgen
controls. The GPU figure against a bare launch is benchmarks/dispatch_overhead.py.

    PYTHONPATH=. python benchmarks/launcher_host_time.py
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import mhfgen  # noqa: F401  (switches the interpreter on without CUDA)
from mhfgen.variants.flash_mhf_fwd import Config as FwdConfig
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Host time per call of the forward launcher with the kernel launch "
        "stubbed out (370M forward at 256 tokens); runs without a GPU."
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=5000,
        help="calls per timed block (median of 5 blocks; default 5000)",
    )
    args = parser.parse_args(argv)
    calls = args.calls
    module = sys.modules["mhfgen.variants.flash_mhf_fwd"]
    real = module.load_kernel
    module.load_kernel = lambda *a, **k: _NoLaunch()
    try:
        q = torch.randn(1, 256, 8, 128)
        k = torch.randn(8, 11, 256, 128)
        r = torch.rand(1, 256, 8, 11)
        config = FwdConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)
        print(
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
            f"median of 5 x {calls} calls, launch stubbed out"
        )
        for label, cfg in (("explicit config", config), ("dispatched", None)):
            for _ in range(200):
                flash_mhf_fwd(q, k, k, k, r, config=cfg)
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(calls):
                    flash_mhf_fwd(q, k, k, k, r, config=cfg)
                samples.append((time.perf_counter() - start) / calls * 1e6)
            print(f"{label:<16} {sorted(samples)[2]:6.2f} us per call")
    finally:
        module.load_kernel = real
    return 0


if __name__ == "__main__":
    sys.exit(main())
