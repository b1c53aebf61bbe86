"""The tuning inputs of one problem on one device, their float64 reference outputs, and
the launch and answer check of any candidate config.

Inputs and references are the ones `mhfgen verify` and the kernel tests use
(mhfgen.verification.make_inputs / reference_outputs): unit-variance q as a view of a
(B, L, H*D) projection, weights ~ N(0, 1/D), normalised-sigmoid fp32 routing, a unit
output gradient; B = T / 2048 when 2048 divides T (like `mhfgen bench`), else B = 1.
References (o and the five gradients, float64, by autograd over chunks of tokens) are
computed once, on first use. A candidate passes when every output of its variant (Variant.outputs)
is within mhfgen.tolerances.tolerance(dtype, grad): the forward bar for o, the gradient
bar for dq, dr, dk, du, dv.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import registry
from ..tolerances import relative_error, tolerance
from ..verification import Case, make_inputs, reference_outputs
from .problem import TuningProblem

#: float64 elements of one (chunk, H, I) activation in the chunked reference
REFERENCE_CHUNK_ELEMENTS = 1 << 28


def batch_of(tokens: int) -> int:
    """B for T tokens: T / 2048 when 2048 divides T, else 1."""
    return tokens // 2048 if tokens >= 2048 and tokens % 2048 == 0 else 1


class Workload:
    """Inputs of `problem` on `device` and the checks of candidates against float64."""

    def __init__(self, problem: TuningProblem, device: torch.device | str, seed: int = 0) -> None:
        self.problem = problem
        self.device = torch.device(device)
        s, T = problem.spec, problem.tokens
        B = batch_of(T)
        self.case = Case("tuning", B, T // B, s.heads, s.kv_heads, s.head_dim, s.experts,
                         s.expert_dim)
        self.q, self.k, self.u, self.v, self.r, self.do = make_inputs(
            self.case, s.torch_dtype, self.device, seed=seed)
        self._refs: dict[str, torch.Tensor] | None = None

    # -- launching ---------------------------------------------------------------
    def args(self, kernel: str) -> tuple:
        """The launcher arguments of variant `kernel`: (q, k, u, v, r[, do])."""
        base = (self.q, self.k, self.u, self.v, self.r)
        return base + (self.do,) if registry.get(kernel).takes_grad else base

    def run(self, kernel: str, config) -> tuple[torch.Tensor, ...]:
        """Launch `kernel` with `config` once; its outputs as a tuple."""
        out = registry.get(kernel).launch(*self.args(kernel), config=config)
        return out if isinstance(out, tuple) else (out,)

    def launch_fn(self, kernel: str, config) -> Callable[[], object]:
        """A no-argument closure launching `kernel` with `config` (for timing)."""
        fn, args = registry.get(kernel).launch_fn(), self.args(kernel)
        return lambda: fn(*args, config=config)

    # -- checking ----------------------------------------------------------------
    def reference(self, kernel: str) -> tuple[torch.Tensor, ...]:
        """The float64 reference outputs of `kernel` (all computed once, then cached)."""
        if self._refs is None:
            s = self.problem.spec
            chunk = max(1, REFERENCE_CHUNK_ELEMENTS // (s.heads * s.intermediate))
            self._refs = reference_outputs(self.q, self.k, self.u, self.v, self.r, self.do,
                                           token_chunk=chunk)
        return tuple(self._refs[name] for name in registry.get(kernel).outputs)

    def check(self, kernel: str, config) -> tuple[float, str | None]:
        """Run the candidate once and compare with float64: (worst relative error, None)
        when every output is within its tolerance, else (worst error, a one-line reason
        naming the first output over its bar)."""
        outs = self.run(kernel, config)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        refs = self.reference(kernel)
        variant = registry.get(kernel)
        bar = tolerance(self.problem.spec.dtype, grad=variant.gradient)
        worst, reason = 0.0, None
        for name, out, ref in zip(variant.outputs, outs, refs):
            err = relative_error(out, ref)
            worst = max(worst, err)
            if not err <= bar and reason is None:
                reason = f"{name} relative error {err:.3g} > tolerance {bar:.3g}"
        return worst, reason
