"""The tuning inputs of one problem on one device, their float64 reference outputs, and
the launch and answer check of any candidate config.

Inputs (seeded, batch 1 so tokens T = L):
    q  (1, T, H, D)    N(0, 1)
    k, u (Hkv, E, De, D)   N(0, 1) / sqrt(D)       so q.k and q.u are O(1)
    v  (Hkv, E, De, D)   N(0, 1) / sqrt(I)
    r  (1, T, H, E)    fp32, the router's normalised sigmoid of N(0, 1) logits
    do (1, T, H, D)    N(0, 1)
References are computed once per kernel family in float64 from the same (rounded)
inputs, in chunks of tokens so the (chunk, H, I) activations stay below ~1 GiB:
forward o; dQ/dR (dq, dr); dK/dU/dV (dk, du, dv), by autograd through
mhfgen.reference.flash_mhf. A candidate passes when every output's relative error is
within mhfgen.tolerances.tolerance(dtype, grad) (forward bar for o, gradient bar else).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from .. import reference
from ..tolerances import relative_error, tolerance
from .problem import TuningProblem

log = logging.getLogger(__name__)

#: float64 elements of one (chunk, H, I) activation in the chunked reference
REFERENCE_CHUNK_ELEMENTS = 1 << 27
OUTPUT_NAMES = {"flash_mhf_fwd": ("o",), "flash_mhf_bwd_dq": ("dq", "dr"),
                "flash_mhf_bwd_dkv": ("dk", "du", "dv")}


def _launcher(kernel: str):
    from .. import kernels

    return getattr(kernels, kernel)


class Workload:
    """Inputs of `problem` on `device` and the checks of candidates against float64."""

    def __init__(self, problem: TuningProblem, device: torch.device | str, seed: int = 0) -> None:
        self.problem = problem
        self.device = torch.device(device)
        spec, T = problem.spec, problem.tokens
        dtype = spec.torch_dtype
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen) * scale).to(self.device, dtype)

        H, Hkv, D, E, De = spec.heads, spec.kv_heads, spec.head_dim, spec.experts, spec.expert_dim
        self.q = randn(1, T, H, D)
        self.k = randn(Hkv, E, De, D, scale=D ** -0.5)
        self.u = randn(Hkv, E, De, D, scale=D ** -0.5)
        self.v = randn(Hkv, E, De, D, scale=spec.intermediate ** -0.5)
        gates = torch.sigmoid(torch.randn(1, T, H, E, generator=gen))
        self.r = (gates / gates.sum(-1, keepdim=True)).to(self.device, torch.float32)
        self.do = randn(1, T, H, D)
        self._refs: dict[str, tuple[torch.Tensor, ...]] = {}

    # -- launching ---------------------------------------------------------------
    def args(self, kernel: str) -> tuple:
        base = (self.q, self.k, self.u, self.v, self.r)
        return base if kernel == "flash_mhf_fwd" else base + (self.do,)

    def run(self, kernel: str, config) -> tuple[torch.Tensor, ...]:
        """Launch `kernel` with `config` once; its outputs as a tuple."""
        out = _launcher(kernel)(*self.args(kernel), config=config)
        return out if isinstance(out, tuple) else (out,)

    def launch_fn(self, kernel: str, config) -> Callable[[], object]:
        """A no-argument closure launching `kernel` with `config` (for timing)."""
        fn, args = _launcher(kernel), self.args(kernel)
        return lambda: fn(*args, config=config)

    # -- checking ----------------------------------------------------------------
    def reference(self, kernel: str) -> tuple[torch.Tensor, ...]:
        """The float64 reference outputs of `kernel` (computed once, then cached)."""
        if kernel not in self._refs:
            self._refs[kernel] = self._compute_reference(kernel)
        return self._refs[kernel]

    def _compute_reference(self, kernel: str) -> tuple[torch.Tensor, ...]:
        spec, T = self.problem.spec, self.problem.tokens
        chunk = max(1, REFERENCE_CHUNK_ELEMENTS // (spec.heads * spec.intermediate))
        k, u, v = (w.double() for w in (self.k, self.u, self.v))
        if kernel == "flash_mhf_fwd":
            outs = [reference.flash_mhf(self.q[:, s:s + chunk].double(), k, u, v,
                                        self.r[:, s:s + chunk].double())
                    for s in range(0, T, chunk)]
            return (torch.cat(outs, dim=1),)
        k, u, v = (w.requires_grad_(True) for w in (k, u, v))
        dqs, drs = [], []
        for s in range(0, T, chunk):
            q = self.q[:, s:s + chunk].double().requires_grad_(True)
            r = self.r[:, s:s + chunk].double().requires_grad_(True)
            o = reference.flash_mhf(q, k, u, v, r)
            o.backward(self.do[:, s:s + chunk].double())
            dqs.append(q.grad)
            drs.append(r.grad)
            del o, q, r
        if kernel == "flash_mhf_bwd_dq":
            return torch.cat(dqs, dim=1), torch.cat(drs, dim=1)
        return k.grad, u.grad, v.grad

    def check(self, kernel: str, config) -> tuple[float, str | None]:
        """Run the candidate once and compare with float64: (worst error relative to
        its bar's scale, None) when every output is within its tolerance, else
        (worst error, a one-line reason naming the output)."""
        outs = self.run(kernel, config)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        refs = self.reference(kernel)
        bar = tolerance(self.problem.spec.dtype, grad=kernel != "flash_mhf_fwd")
        worst, reason = 0.0, None
        for name, out, ref in zip(OUTPUT_NAMES[kernel], outs, refs):
            err = relative_error(out, ref)
            if err > worst:
                worst = err
            if not err <= bar and reason is None:
                reason = f"{name} relative error {err:.3g} > tolerance {bar:.3g}"
        return worst, reason
