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

Timing in context (`pairing`): the split backward runs dK/dU/dV on the caller's stream
and dQ/dR beside it on a second one (mhfgen.kernels.dispatched.backward), so what a
dK/dU/dV config costs a training step is not its time alone: dQ/dR's programs fill the
multiprocessors its last partial wave leaves idle, and a config that evens out that wave
alone (token splits, say) can be slower beside dQ/dR. Where the runtime runs the pair on
two streams (dispatched.two_streams: a GPU, MHFGEN_BACKWARD_STREAMS unset), a dK/dU/dV
candidate is launched the same way, beside the dQ/dR kernel the dispatcher picks for the
problem (its stored winner, else its heuristic), and timed as the pair's time less that
dQ/dR's time alone (the timers do the subtraction: mhfgen.tuning.timer). So a dK/dU/dV
record's ms is what the candidate adds to the split backward, and the dQ/dR record's ms
plus it is the split backward's time (mhfgen.dispatch.backward_form compares that sum
with the one pass). dQ/dR is timed alone: pairing both ways would count the overlap twice.
The answer check always runs the candidate alone.

Decode sizes (`graph_timed`): a forward of at most GRAPH_TOKENS tokens is served from
CUDA graphs, where no host work sits between calls, and its kernel takes a few
microseconds: timed eagerly, a candidate's host path (argument checks, descriptors, a
second launch) can outweigh its GPU time and rank a slower kernel first. On a GPU such a
candidate is timed the way `mhfgen bench --suite decode` times the forward: one CUDA graph
of calls, each on its own copy of the weights (`rotating_fns`, together more than
mhfgen.graph_timing.ROTATE_BYTES, so no call finds its weights in the L2), the median
replay over the calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import registry
from ..dispatch import decide
from ..kernels.dispatched import two_streams
from ..tolerances import relative_error, tolerance_for
from ..verification import Case, fp8_inputs, make_inputs, reference_outputs
from .problem import TuningProblem

#: float64 elements of one (chunk, H, I) activation in the chunked reference
REFERENCE_CHUNK_ELEMENTS = 1 << 28


def batch_of(tokens: int) -> int:
    """B for T tokens: T / 2048 when 2048 divides T, else 1."""
    return tokens // 2048 if tokens >= 2048 and tokens % 2048 == 0 else 1


#: a forward of at most this many tokens is timed in CUDA graphs on a GPU (module doc)
GRAPH_TOKENS = 64

#: the op timed in context -> the op launched beside it (see the module doc)
PAIRED_OPS = {"bwd_dkv": "bwd_dq"}


@dataclass(frozen=True)
class Pairing:
    """The kernel a candidate is timed beside: `variant` with `config` (op `op`), launched
    by `launch` (no arguments) on a second stream."""

    op: str
    variant: str
    config: object
    launch: Callable[[], object]


class Workload:
    """Inputs of `problem` on `device` and the checks of candidates against float64.

    paired: time dK/dU/dV candidates beside dQ/dR (module doc); None: as the runtime
    runs the split backward (mhfgen.kernels.dispatched.two_streams). On the CPU a paired
    launch runs the two kernels one after the other."""

    def __init__(
        self,
        problem: TuningProblem,
        device: torch.device | str,
        seed: int = 0,
        paired: bool | None = None,
    ) -> None:
        self.problem = problem
        self.device = torch.device(device)
        self.paired = two_streams(self.device) if paired is None else paired
        self._pairings: dict[str, Pairing] = {}  # op -> what it is timed beside
        s, T = problem.spec, problem.tokens
        B = batch_of(T)
        self.case = Case(
            "tuning", B, T // B, s.heads, s.kv_heads, s.head_dim, s.experts, s.expert_dim
        )
        inputs = make_inputs(self.case, s.torch_dtype, self.device, seed=seed)
        #: FP8-weight specs: the stacked scales the forward takes after r (else None), and
        #: the dequantised weights the float64 reference is computed on
        self.scales = None
        self._dense = inputs
        if s.fp8_weights:
            fp8, self._dense = fp8_inputs(*inputs)
            inputs = (*fp8[:5], inputs[5])
            self.scales = fp8[5]
        self.q, self.k, self.u, self.v, self.r, self.do = inputs
        self._refs: dict[str, torch.Tensor] | None = None
        self._weight_sets: list[tuple[torch.Tensor, ...]] | None = None

    # -- launching ---------------------------------------------------------------
    def args(self, kernel: str) -> tuple:
        """The launcher arguments of variant `kernel`: (q, k, u, v, r[, do]), or
        (q, k, u, v, r, scales) for the forward of an FP8-weight spec."""
        base = (self.q, self.k, self.u, self.v, self.r)
        if registry.get(kernel).takes_grad:
            return base + (self.do,)
        return base if self.scales is None else base + (self.scales,)

    def run(self, kernel: str, config) -> tuple[torch.Tensor, ...]:
        """Launch `kernel` with `config` once; its outputs as a tuple."""
        out = registry.get(kernel).launch(*self.args(kernel), config=config)
        return out if isinstance(out, tuple) else (out,)

    def launch_fn(self, kernel: str, config) -> Callable[[], object]:
        """A no-argument closure launching `kernel` with `config` (for timing); where
        `kernel` is timed in context, with its pairing's kernel beside it, as
        mhfgen.kernels.dispatched.backward launches the two (the candidate first, on the
        current stream; the other on a side stream that the current one then waits for)."""
        alone = self._alone(kernel, config)
        pairing = self.pairing(kernel)
        if pairing is None:
            return alone
        if self.device.type != "cuda":

            def in_turn():
                alone()
                pairing.launch()

            return in_turn
        side = torch.cuda.Stream(self.device)

        def beside():
            main = torch.cuda.current_stream(self.device)
            side.wait_stream(main)
            alone()
            with torch.cuda.stream(side):
                pairing.launch()
            main.wait_stream(side)

        return beside

    def graph_timed(self, kernel: str) -> bool:
        """Whether `kernel` is timed in CUDA graphs here (module doc): a forward variant
        at decode size (at most GRAPH_TOKENS tokens) on a CUDA device."""
        return (
            self.device.type == "cuda"
            and self.problem.tokens <= GRAPH_TOKENS
            and not registry.get(kernel).takes_grad
        )

    def _weights(self) -> tuple[torch.Tensor, ...]:
        """The forward's weight arguments: (k, u, v), and the scales with FP8 weights."""
        return (self.k, self.u, self.v) + (() if self.scales is None else (self.scales,))

    def weight_copies(self) -> int:
        """How many copies of the weights weight_sets holds (allocating nothing):
        mhfgen.graph_timing.rotation_copies of their bytes."""
        from ..graph_timing import rotation_copies

        return rotation_copies(sum(t.numel() * t.element_size() for t in self._weights()))

    def weight_sets(self) -> list[tuple[torch.Tensor, ...]]:
        """weight_copies() copies of the weight arguments, the first the workload's own,
        the others clones, so that calls taking them in turn read their weights from HBM
        (made on first use)."""
        if self._weight_sets is None:
            own = self._weights()
            clones = [tuple(t.clone() for t in own) for _ in range(self.weight_copies() - 1)]
            self._weight_sets = [own, *clones]
        return self._weight_sets

    def rotating_fns(self, kernel: str, config) -> list[Callable[[], object]]:
        """No-argument closures launching forward `kernel` with `config`, one per copy of
        the weights (weight_sets), on the same q and r."""
        fn = registry.get(kernel).launch_fn()
        return [
            (lambda w=w: fn(self.q, *w[:3], self.r, *w[3:], config=config))
            for w in self.weight_sets()
        ]

    def _alone(self, kernel: str, config) -> Callable[[], object]:
        """A no-argument closure launching `kernel` with `config` on this workload's inputs."""
        fn, args = registry.get(kernel).launch_fn(), self.args(kernel)
        return lambda: fn(*args, config=config)

    def pairing(self, kernel: str) -> Pairing | None:
        """What variant `kernel` is timed beside (module doc), or None (timed alone). The
        other op's dispatch choice is made once per workload, from the databases as they
        are then (dispatch.decide: a winner stored earlier in the same run counts), and
        the other kernel run once (compiled) before it is returned."""
        op = registry.get(kernel).op
        if not self.paired or op not in PAIRED_OPS:
            return None
        if op not in self._pairings:
            other = PAIRED_OPS[op]
            choice = decide(other, self.problem.spec, self.problem.tokens, self.device)
            launch = self._alone(choice.variant, choice.config)
            launch()
            self._pairings[op] = Pairing(other, choice.variant, choice.config, launch)
        return self._pairings[op]

    # -- checking ----------------------------------------------------------------
    def reference(self, kernel: str) -> tuple[torch.Tensor, ...]:
        """The float64 reference outputs of `kernel` (all computed once, then cached)."""
        if self._refs is None:
            s = self.problem.spec
            chunk = max(1, REFERENCE_CHUNK_ELEMENTS // (s.heads * s.intermediate))
            self._refs = reference_outputs(*self._dense, token_chunk=chunk)
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
        bar = tolerance_for(variant, self.problem.spec.dtype, grad=variant.gradient)
        worst, reason = 0.0, None
        for name, out, ref in zip(variant.outputs, outs, refs):
            err = relative_error(out, ref)
            worst = max(worst, err)
            if not err <= bar and reason is None:
                reason = f"{name} relative error {err:.3g} > tolerance {bar:.3g}"
        return worst, reason
