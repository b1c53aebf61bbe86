"""Side-by-side benchmarks of the FlashMHF core op and layer (the `mhfgen bench` command).

For one problem, each pass (forward; forward + backward) and each method, one `Row`: the
median time, TFLOP/s, peak memory above the inputs, and ratios against the mhfgen op measured
in the same run, beside the GPU, the versions and the date.

Methods (a registry, `METHODS`; `register_method` adds one):
- core scope, all given q (B, L, H, D), k/u/v (Hkv, E, De, D), r (B, L, H, E):
  `mhfgen` (the generated kernels, `mhfgen.flash_mhf`), `torch` (the naive reference,
  `mhfgen.reference.flash_mhf`), `torch_compile` (torch.compile of the reference), and
  `swiglu`, a SwiGLU FFN of equal FLOPs (d = H*D, intermediate I; cuBLAS through torch).
- layer scope, given x (B, L, d): `layer_mhfgen` (the `FlashMHF` module on the kernels) and
  `layer_swiglu` (the `SwiGLU` module of the same d_model and intermediate size).
- optional peers, registered always and run only where they can (`Method.unavailable`):
  `helion`, a FlashMHF forward written in Helion after Helion's autotuner
  (mhfgen.peers.helion_fwd), forward only (`Method.passes`); `authors`, the paper authors'
  Triton kernel, forward and backward, from a file the user fetched (mhfgen.peers.authors).

FLOPs (docs/CONTRACTS.md, section 5): the core and the SwiGLU FFN do 6*T*H*I*D = 6*T*d*I
per forward; the FlashMHF layer adds its two d x d projections, 4*T*d^2 (the router and the
RMSNorm are not counted); forward + backward counts 3x the forward.

Timing: on CUDA the median of `triton.testing.do_bench` (warm-up, L2 flushed between runs)
and the peak of `torch.cuda.max_memory_allocated` above what was allocated before the call
(the inputs). Without CUDA, `torch.utils.benchmark` (Timer.adaptive_autorange: blocks of
runs until the median is stable within 10% or a time limit; no peak memory) lets the command
and its tests run on tiny problems through Triton's interpreter; those rows are labelled
`CPU_LABEL` and are no GPU figures. (One call timed once per measurement, as before, read
39.7, 18.7, 19.4 and 0.156 ms for one op across runs; a stable median needs many runs.)
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .presets import DTYPE_NAMES

if TYPE_CHECKING:  # torch is imported where it is used: `mhfgen bench --help` runs without it
    import torch

log = logging.getLogger(__name__)

PASSES = ("fwd", "fwdbwd")
PASS_LABELS = {"fwd": "forward", "fwdbwd": "forward + backward"}
SCOPES = ("core", "layer")
#: per scope, the method every other method's ratios are taken against
BASELINES = {"core": "mhfgen", "layer": "layer_mhfgen"}
#: tokens per sequence when the token count allows: B = tokens / 2048, else B = 1
SEQLEN = 2048
CPU_LABEL = "CPU/interpreter timings, not GPU figures"
FLOP_NOTE = (
    "TFLOP/s counts: core op and SwiGLU FFN 6*T*H*I*D = 6*T*d*I per forward (equal); "
    "FlashMHF layer 6*T*d*I + 4*T*d^2 (its two d x d projections; router and RMSNorm "
    "not counted); SwiGLU layer 6*T*d*I; forward + backward = 3x forward."
)
RATIO_NOTE = (
    "time/mhfgen = method ms / mhfgen ms (above 1: mhfgen is faster); TFLOP/s/mhfgen "
    "and mem/mhfgen likewise; the layer rows are compared with layer_mhfgen."
)


# --------------------------------------------------------------------------- problem


@dataclass(frozen=True)
class BenchProblem:
    """One problem of the benchmark: the FlashMHF sizes, the dtype and the token count.

    d_model = heads * head_dim; expert_dim = intermediate / experts. Inputs have
    B = tokens / 2048 sequences of 2048 tokens when 2048 divides tokens, else one sequence.
    Sized by intermediate (not expert_dim) and with the dtype and token count, as a
    benchmark table's row names it.
    """

    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    experts: int
    dtype: str
    tokens: int

    def __post_init__(self) -> None:
        for name in ("heads", "kv_heads", "head_dim", "intermediate", "experts", "tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BenchProblem.{name} must be a positive int, got {value!r}")
        if self.intermediate % self.experts:
            raise ValueError(
                f"intermediate ({self.intermediate}) must be divisible by experts ({self.experts})"
            )
        if self.heads % self.kv_heads:
            raise ValueError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")

    @property
    def d_model(self) -> int:
        return self.heads * self.head_dim

    @property
    def expert_dim(self) -> int:
        return self.intermediate // self.experts

    @property
    def batch(self) -> int:
        return self.tokens // SEQLEN if self.tokens % SEQLEN == 0 else 1

    @property
    def seqlen(self) -> int:
        return self.tokens // self.batch

    @property
    def torch_dtype(self) -> torch.dtype:
        from .spec import DTYPES

        return DTYPES[self.dtype]

    @property
    def shape(self) -> str:
        """'(d, H, D, I, E)' as docs/CONTRACTS.md writes shapes, with ', Hkv=..' when Hkv < H."""
        s = f"({self.d_model}, {self.heads}, {self.head_dim}, {self.intermediate}, {self.experts}"
        return s + (f", Hkv={self.kv_heads})" if self.kv_heads != self.heads else ")")

    def with_tokens(self, tokens: int) -> BenchProblem:
        return BenchProblem(
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.intermediate,
            self.experts,
            self.dtype,
            tokens,
        )


def core_flops(p: BenchProblem) -> int:
    """Forward FLOPs of the core op: 6 * T * H * I * D (also a SwiGLU FFN's, d = H * D)."""
    return 6 * p.tokens * p.heads * p.intermediate * p.head_dim


def layer_flops(p: BenchProblem) -> int:
    """Forward FLOPs of the FlashMHF layer: the core plus the projections, 4 * T * d^2."""
    return core_flops(p) + 4 * p.tokens * p.d_model**2


def pass_flops(forward_flops: int, pass_: str) -> int:
    """FLOPs of a pass: the forward's, or 3x for forward + backward."""
    return 3 * forward_flops if pass_ == "fwdbwd" else forward_flops


# --------------------------------------------------------------------------- methods


class Unsupported(ValueError):
    """A method's builder cannot take the problem (a peer's limits: a dtype, a head dim):
    its row gets status 'unsupported' and the message, not 'failed'."""


@dataclass
class Case:
    """A built benchmark: inputs held by the `run` closure (one call of the pass) and the
    leaf tensors whose .grad must be reset between runs (empty for the forward). Not a
    record of sizes (BenchProblem is): what one method built for one problem."""

    run: Callable[[], object]
    leaves: list

    def reset_grads(self) -> None:
        for t in self.leaves:
            t.grad = None


@dataclass(frozen=True)
class Method:
    """A benchmarked implementation: `build(problem, pass_, device)` returns its Case;
    `forward_flops(problem)` is what its TFLOP/s count; `passes` the passes it implements
    (the others are not measured); `unavailable()` None, or why it cannot run here (an
    optional package that does not import)."""

    name: str
    scope: str
    description: str
    build: Callable[[BenchProblem, str, torch.device], Case]
    forward_flops: Callable[[BenchProblem], int]
    passes: tuple[str, ...] = PASSES
    unavailable: Callable[[], str | None] = lambda: None
    in_default: bool = True  # run when --methods is not given (where available)


METHODS: dict[str, Method] = {}


def register_method(
    name: str,
    scope: str,
    description: str,
    forward_flops: Callable[[BenchProblem], int] = core_flops,
    passes: tuple[str, ...] = PASSES,
    unavailable: Callable[[], str | None] = lambda: None,
    in_default: bool = True,
):
    """Decorator: add a Case builder to METHODS under `name`."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not passes or set(passes) - set(PASSES):
        raise ValueError(f"passes must be some of {PASSES}, got {passes!r}")

    def add(build):
        if name in METHODS:
            raise ValueError(f"benchmark method {name!r} is already registered")
        METHODS[name] = Method(
            name, scope, description, build, forward_flops, tuple(passes), unavailable, in_default
        )
        return build

    return add


def methods_of(scope: str, available_only: bool = False, default_only: bool = False) -> list[str]:
    """The methods of `scope`; with `available_only`, those that can run here; with
    `default_only`, those run when no method is named (Method.in_default)."""
    return [
        name
        for name, m in METHODS.items()
        if m.scope == scope
        and not (available_only and m.unavailable())
        and not (default_only and not m.in_default)
    ]


def _randn(shape, p: BenchProblem, device, scale: float = 1.0, grad: bool = False) -> torch.Tensor:
    import torch

    t = (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(p.torch_dtype)
    return t.requires_grad_(grad)


def core_inputs(p: BenchProblem, device, grad: bool):
    """proj (B, L, d), the in-projection's output that q (B, L, H, D) is a view of; k, u, v
    (Hkv, E, De, D) ~ N(0, 1/D); r (B, L, H, E) fp32, sigmoid gates normalised over E."""
    import torch

    torch.manual_seed(0)
    B, L = p.batch, p.seqlen
    proj = _randn((B, L, p.d_model), p, device, grad=grad)
    k, u, v = (
        _randn((p.kv_heads, p.experts, p.expert_dim, p.head_dim), p, device, p.head_dim**-0.5, grad)
        for _ in range(3)
    )
    gates = torch.sigmoid(torch.randn(B, L, p.heads, p.experts, device=device))
    r = (gates / gates.sum(-1, keepdim=True)).requires_grad_(grad)
    return proj, k, u, v, r


def _core_case(fn, p: BenchProblem, pass_: str, device, layout=None) -> Case:
    """The case of a core op `fn(q, k, u, v, r)` on the problem's inputs, q a view of the
    in-projection's output made per call. `layout`, a function (q, r) -> (q', r'), puts q
    and r in a peer's own layout once, before any timing (mhfgen.peers.authors); fn then
    takes q' and r', and the output gradient has q''s shape."""
    import torch

    grad = pass_ == "fwdbwd"
    proj, k, u, v, r = core_inputs(p, device, grad)
    qshape = (p.batch, p.seqlen, p.heads, p.head_dim)
    if layout is None:

        def q_of():
            return proj.view(qshape)

        leaves = [proj, k, u, v, r]
    else:
        q_fixed, r = layout(proj.view(qshape), r)
        del proj

        def q_of():
            return q_fixed

        leaves = [q_fixed, k, u, v, r]
    if not grad:

        def run():
            with torch.no_grad():
                return fn(q_of(), k, u, v, r)

        return Case(run, [])
    do = _randn(tuple(q_of().shape), p, device)

    def run_fwdbwd():
        fn(q_of(), k, u, v, r).backward(do)

    return Case(run_fwdbwd, leaves)


def _module_case(module: torch.nn.Module, p: BenchProblem, pass_: str, device) -> Case:
    import torch

    grad = pass_ == "fwdbwd"
    torch.manual_seed(1)
    x = _randn((p.batch, p.seqlen, p.d_model), p, device, grad=grad)
    module.requires_grad_(grad)
    if not grad:

        def run():
            with torch.no_grad():
                return module(x)

        return Case(run, [])
    dy = _randn(x.shape, p, device)

    def run_fwdbwd():
        module(x).backward(dy)

    return Case(run_fwdbwd, [x, *module.parameters()])


@register_method("mhfgen", "core", "the generated Triton kernels, mhfgen.flash_mhf")
def _build_mhfgen(p, pass_, device):
    from .ops import flash_mhf

    return _core_case(flash_mhf, p, pass_, device)


@register_method("torch", "core", "the naive PyTorch reference, mhfgen.reference.flash_mhf")
def _build_torch(p, pass_, device):
    from . import reference

    return _core_case(reference.flash_mhf, p, pass_, device)


@register_method(
    "torch_compile", "core", "torch.compile (default mode) of the reference; compilation not timed"
)
def _build_torch_compile(p, pass_, device):
    import torch

    from . import reference

    # NOTE: a fresh dynamo state per (problem, pass): each size compiles static shapes, as
    # a user compiling for one size would, instead of dynamic-shape graphs after the first
    # size of a sweep, and the recompile limit is never reached.
    torch._dynamo.reset()
    return _core_case(torch.compile(reference.flash_mhf), p, pass_, device)


@register_method("swiglu", "core", "SwiGLU FFN of equal FLOPs (d = H*D, intermediate I; cuBLAS)")
def _build_swiglu(p, pass_, device):
    import torch

    from .layers import SwiGLU

    torch.manual_seed(2)
    return _module_case(
        SwiGLU(p.d_model, p.intermediate, device=device, dtype=p.torch_dtype), p, pass_, device
    )


@register_method(
    "mhfgen_fp8",
    "core",
    "the generated kernels on FP8 (e4m3) expert weights, mhfgen.flash_mhf_fp8 (quantised "
    "before timing; the FLOPs counted as mhfgen's); forward only; bf16/fp16; run when named",
    passes=("fwd",),
    in_default=False,
)
def _build_mhfgen_fp8(p, pass_, device):
    import torch

    from .fp8 import quantize_experts
    from .ops import flash_mhf_fp8

    proj, k, u, v, r = core_inputs(p, device, grad=False)
    k8, u8, v8, scales = quantize_experts(k, u, v)
    qshape = (p.batch, p.seqlen, p.heads, p.head_dim)

    def run():
        with torch.no_grad():
            return flash_mhf_fp8(proj.view(qshape), k8, u8, v8, r, scales)

    return Case(run, [])


def _helion_unavailable() -> str | None:
    from .peers import helion_fwd

    return helion_fwd.available()


@register_method(
    "helion",
    "core",
    "a FlashMHF forward written in Helion (mhfgen.peers.helion_kernel) after "
    "Helion's autotuner (not timed); forward only; on a CUDA GPU where helion is "
    "installed",
    passes=("fwd",),
    unavailable=_helion_unavailable,
)
def _build_helion(p, pass_, device):
    from .peers import helion_fwd

    return _core_case(helion_fwd.flash_mhf_fwd, p, pass_, device)


def _authors_unavailable() -> str | None:
    from .peers import authors

    return authors.available()


@register_method(
    "authors",
    "core",
    "the paper authors' Triton kernel (mhfgen.peers.authors), from a file fetched from their "
    "repository and named by --authors-kernel; bf16, power-of-two head dims; on a CUDA GPU",
    unavailable=_authors_unavailable,
)
def _build_authors(p, pass_, device):
    from .peers import authors

    reason = authors.unsupported(p.dtype, p.head_dim, p.expert_dim)
    if reason:
        raise Unsupported(reason)
    return _core_case(authors.flash_mhf, p, pass_, device, layout=authors.to_authors_layout)


@register_method(
    "layer_mhfgen",
    "layer",
    "FlashMHF layer (projections, RMSNorm, router, core on the kernels)",
    forward_flops=layer_flops,
)
def _build_layer_mhfgen(p, pass_, device):
    import torch

    from .layers import FlashMHF

    torch.manual_seed(2)
    layer = FlashMHF(
        p.d_model,
        p.heads,
        p.intermediate,
        p.experts,
        n_kv_heads=p.kv_heads,
        backend="triton",
        device=device,
        dtype=p.torch_dtype,
    )
    return _module_case(layer, p, pass_, device)


@register_method("layer_swiglu", "layer", "SwiGLU layer of the same d_model and intermediate size")
def _build_layer_swiglu(p, pass_, device):
    return _build_swiglu(p, pass_, device)


# --------------------------------------------------------------------------- timers


class CudaTimer:
    """Medians of triton.testing.do_bench; peak memory above the inputs."""

    label = "CUDA: median of triton.testing.do_bench; peak = max_memory_allocated above the inputs"

    def __init__(self, warmup_ms: int = 25, rep_ms: int = 100) -> None:
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()

    def time_ms(self, case: Case) -> float:
        from triton.testing import do_bench

        case.reset_grads()
        return float(
            do_bench(
                case.run,
                warmup=self.warmup_ms,
                rep=self.rep_ms,
                grad_to_none=case.leaves or None,
                return_mode="median",
            )
        )

    def peak_mib(self, case: Case) -> float | None:
        import torch

        case.reset_grads()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        case.run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        case.reset_grads()
        return peak / 2**20

    def release(self) -> None:
        import torch

        gc.collect()
        torch.cuda.empty_cache()


class CpuTimer:
    """Without CUDA: the median of torch.utils.benchmark.Timer.adaptive_autorange (runs in
    blocks until the interquartile range is within `threshold` of the median, between
    min_run_s and max_run_s of timing), gradients reset before each run; no memory."""

    label = CPU_LABEL + " (torch.utils.benchmark adaptive_autorange medians, no peak memory)"

    def __init__(
        self, threshold: float = 0.1, min_run_s: float = 0.01, max_run_s: float = 0.25
    ) -> None:
        self.threshold, self.min_run_s, self.max_run_s = threshold, min_run_s, max_run_s

    def sync(self) -> None:
        pass

    def time_ms(self, case: Case) -> float:
        from torch.utils import benchmark

        timer = benchmark.Timer(
            stmt="reset(); run()", globals={"reset": case.reset_grads, "run": case.run}
        )
        m = timer.adaptive_autorange(
            threshold=self.threshold, min_run_time=self.min_run_s, max_run_time=self.max_run_s
        )
        return m.median * 1e3

    def peak_mib(self, case: Case) -> float | None:
        return None

    def release(self) -> None:
        gc.collect()


def default_timer(device: torch.device):
    return CudaTimer() if device.type == "cuda" else CpuTimer()


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One measurement; `as_dict` names the fields as JSON/CSV carry them ('pass')."""

    gpu: str
    compute_capability: str
    torch: str
    triton: str
    mhfgen: str
    date: str
    timer: str
    scope: str
    method: str
    pass_: str
    shape: str
    d_model: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    experts: int
    expert_dim: int
    dtype: str
    tokens: int
    batch: int
    seqlen: int
    flops: int
    status: str = "ok"  # ok | oom | failed | unsupported
    median_ms: float | None = None
    spread_pct: float | None = None  # (max - min) / median of the --repeat timings
    tflops: float | None = None
    peak_mib: float | None = None
    time_vs_mhfgen: float | None = None
    tflops_vs_mhfgen: float | None = None
    memory_vs_mhfgen: float | None = None
    error: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return {name: d[name] for name in ROW_FIELDS}


ROW_FIELDS = tuple("pass" if f.name == "pass_" else f.name for f in fields(Row))


def environment(device: torch.device, timer) -> dict:
    """GPU, compute capability, versions, UTC date and timer of this run."""
    import torch
    import triton

    from .device import compute_capability, gpu_name
    from .version import __version__

    return dict(
        gpu=gpu_name(device),
        compute_capability=compute_capability(device),
        torch=torch.__version__,
        triton=triton.__version__,
        mhfgen=__version__,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        timer=timer.label,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def measure(
    method: Method, p: BenchProblem, pass_: str, device: torch.device, timer, repeat: int, env: dict
) -> Row:
    """Build the method's inputs, warm up (compiling), take the peak memory of one call,
    then `repeat` timings; the Row's median is theirs. A method that does not take the
    problem (its builder raises Unsupported) gives status 'unsupported', an out-of-memory
    'oom', any other error 'failed', each with the reason; none stops the caller."""
    flops = pass_flops(method.forward_flops(p), pass_)
    row = Row(
        **env,
        scope=method.scope,
        method=method.name,
        pass_=pass_,
        shape=p.shape,
        d_model=p.d_model,
        heads=p.heads,
        kv_heads=p.kv_heads,
        head_dim=p.head_dim,
        intermediate=p.intermediate,
        experts=p.experts,
        expert_dim=p.expert_dim,
        dtype=p.dtype,
        tokens=p.tokens,
        batch=p.batch,
        seqlen=p.seqlen,
        flops=flops,
    )
    case, phase = None, "building inputs"
    try:
        case = method.build(p, pass_, device)
        phase = "warm-up" + {
            "torch_compile": " (compilation)",
            "helion": " (autotuning)",
            "authors": " (its autotuning)",
        }.get(method.name, "")
        case.run()
        timer.sync()
        phase = "peak memory run"
        row.peak_mib = timer.peak_mib(case)
        phase = "timing"
        times = [timer.time_ms(case) for _ in range(repeat)]
    except Unsupported as exc:
        row.status, row.error, row.peak_mib = "unsupported", str(exc), None
        log.info("%s %s %s tokens=%d: %s", method.name, pass_, p.shape, p.tokens, row.error)
    except Exception as exc:  # NOTE: recorded in the row (status, error), logged, not re-raised
        row.status = "oom" if _is_oom(exc) else "failed"
        row.error = (
            f"out of memory during {phase}" if row.status == "oom" else f"{phase}: {_short(exc)}"
        )
        row.peak_mib = None
        log.warning("%s %s %s tokens=%d: %s", method.name, pass_, p.shape, p.tokens, row.error)
        log.debug("benchmark failure", exc_info=True)
    else:
        row.median_ms = statistics.median(times)
        row.spread_pct = (
            100 * (max(times) - min(times)) / row.median_ms if row.median_ms > 0 else 0.0
        )
        row.tflops = flops / (row.median_ms * 1e-3) / 1e12 if row.median_ms > 0 else None
    finally:
        case = None
        timer.release()
    return row


def add_ratios(rows: list[Row]) -> None:
    """Fill the *_vs_mhfgen ratios of every row against its scope's baseline method
    (mhfgen, layer_mhfgen) at the same shape, dtype, tokens and pass."""
    base = {
        (r.scope, r.shape, r.dtype, r.tokens, r.pass_): r
        for r in rows
        if r.method == BASELINES[r.scope] and r.status == "ok"
    }
    for r in rows:
        b = base.get((r.scope, r.shape, r.dtype, r.tokens, r.pass_))
        if b is None or r.status != "ok":
            continue
        if b.median_ms:
            r.time_vs_mhfgen = r.median_ms / b.median_ms
        if b.tflops and r.tflops is not None:
            r.tflops_vs_mhfgen = r.tflops / b.tflops
        if b.peak_mib and r.peak_mib is not None:
            r.memory_vs_mhfgen = r.peak_mib / b.peak_mib


def run_benchmarks(
    problems: Iterable[BenchProblem],
    methods: Iterable[str],
    passes: Iterable[str] = PASSES,
    device: torch.device | None = None,
    repeat: int = 3,
    timer=None,
    on_row: Callable[[Row, int, int], None] | None = None,
) -> list[Row]:
    """Measure every (problem, pass, method), in that nesting, and return the rows with
    their ratios; a method is measured only in the passes it implements. `on_row(row,
    index, total)` is called after each measurement. ValueError for an unknown method or
    one that cannot run here (Method.unavailable)."""
    import torch

    problems, methods, passes = list(problems), list(methods), list(passes)
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"unknown benchmark method {name!r}; known: {', '.join(METHODS)}")
        reason = METHODS[name].unavailable()
        if reason:
            raise ValueError(f"benchmark method {name!r} cannot run here: {reason}")
    for pass_ in passes:
        if pass_ not in PASSES:
            raise ValueError(f"unknown pass {pass_!r}; known: {', '.join(PASSES)}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = timer or default_timer(device)
    env = environment(device, timer)
    rows: list[Row] = []
    total = len(problems) * sum(
        pass_ in METHODS[name].passes for pass_ in passes for name in methods
    )
    for p in problems:
        for pass_ in passes:
            for name in methods:
                if pass_ not in METHODS[name].passes:
                    continue
                row = measure(METHODS[name], p, pass_, device, timer, repeat, env)
                rows.append(row)
                if on_row:
                    on_row(row, len(rows), total)
    add_ratios(rows)
    return rows


# --------------------------------------------------------------------------- output


def _num(x, digits: int) -> str:
    """x with `digits` decimals; 3 significant digits when that would print 0.0."""
    if x is None:
        return "n/a"
    if x != 0 and abs(x) < 10**-digits * 10:
        return f"{x:.3g}"
    return f"{x:,.{digits}f}"


def format_row_line(row: Row) -> str:
    """A one-line progress summary of a row."""
    what = f"{row.shape} {row.dtype} T={row.tokens} {PASS_LABELS[row.pass_]:<18} {row.method:<13}"
    if row.status != "ok":
        return f"{what} {row.status.upper()}: {row.error}"
    return (
        f"{what} {_num(row.median_ms, 3)} ms  {_num(row.tflops, 1)} TFLOP/s  "
        f"peak {_num(row.peak_mib, 0)} MiB"
    )


def format_table(rows: list[Row]) -> str:
    """The rows as text tables, one per (scope, shape, dtype, tokens, pass), under a header
    naming the GPU, versions, date and timer, and the FLOP counts behind TFLOP/s."""
    from .cli.output import table

    if not rows:
        return "no rows"
    r0 = rows[0]
    lines = [
        f"mhfgen bench on {r0.gpu} (compute capability {r0.compute_capability}), "
        f"torch {r0.torch}, triton {r0.triton}, mhfgen {r0.mhfgen}, {r0.date}",
        f"timer: {r0.timer}",
    ]
    if r0.compute_capability == "none":
        lines.append(f"*** {CPU_LABEL} ***")
    lines += [FLOP_NOTE, RATIO_NOTE]
    head = (
        "method",
        "ms",
        "TFLOP/s",
        "peak MiB",
        "time/mhfgen",
        "TFLOP/s/mhfgen",
        "mem/mhfgen",
        "status",
    )
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.scope, r.shape, r.dtype, r.tokens, r.pass_), []).append(r)
    footnotes = []
    for (scope, shape, dtype, tokens, pass_), group in groups.items():
        g0 = group[0]
        lines.append("")
        lines.append(
            f"{scope} {shape} {dtype}, {tokens} tokens (B={g0.batch}, L={g0.seqlen}), "
            f"{PASS_LABELS[pass_]}"
        )
        body = []
        for r in group:
            status = r.status
            if r.error:
                footnotes.append(
                    f"[{len(footnotes) + 1}] {r.method} {shape} {tokens} {pass_}: {r.error}"
                )
                status += f" [{len(footnotes)}]"
            body.append(
                (
                    r.method,
                    _num(r.median_ms, 3),
                    _num(r.tflops, 1),
                    _num(r.peak_mib, 0),
                    _num(r.time_vs_mhfgen, 2),
                    _num(r.tflops_vs_mhfgen, 2),
                    _num(r.memory_vs_mhfgen, 2),
                    status,
                )
            )
        lines.append(table(head, body))
    if footnotes:
        lines += ["", *footnotes]
    return "\n".join(lines)


def write_json(rows: list[Row], path) -> None:
    """{"format", "flop_note", "ratio_note", "rows": [row, ...]}; every row carries the GPU,
    versions, date and timer; n/a values are null."""
    doc = {
        "format": "mhfgen-bench/1",
        "flop_note": FLOP_NOTE,
        "ratio_note": RATIO_NOTE,
        "rows": [r.as_dict() for r in rows],
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def write_csv(rows: list[Row], path) -> None:
    """One line per row, header ROW_FIELDS; n/a values are empty cells."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.as_dict().items()})


def require_matplotlib() -> None:
    """Raise ImportError with a clear message when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "--plot needs matplotlib, which is not installed here (pip install matplotlib)"
        ) from exc


def plot(rows: list[Row], path, title: str | None = None) -> None:
    """PNG of TFLOP/s against tokens: one line per method and pass (solid with circles
    forward, dashed with squares forward + backward), one panel per scope; failed rows are
    left out."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok" and r.tflops is not None]
    scopes = [s for s in SCOPES if any(r.scope == s for r in rows)] or ["core"]
    shapes = sorted({r.shape for r in rows})
    fig, axes = plt.subplots(1, len(scopes), figsize=(7 * len(scopes), 5), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(METHODS)}
    for ax, scope in zip(axes[0], scopes):
        series: dict[tuple, list[Row]] = {}
        for r in ok:
            if r.scope == scope:
                series.setdefault((r.method, r.pass_, r.shape, r.dtype), []).append(r)
        for (method, pass_, shape, _dtype), pts in series.items():
            pts.sort(key=lambda r: r.tokens)
            label = f"{method} {PASS_LABELS[pass_]}" + (f" {shape}" if len(shapes) > 1 else "")
            ax.plot(
                [r.tokens for r in pts],
                [r.tflops for r in pts],
                marker="o" if pass_ == "fwd" else "s",
                linestyle="-" if pass_ == "fwd" else "--",
                color=colors.get(method),
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens (B*L)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{scope}: {', '.join(shapes)}")
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    r0 = rows[0] if rows else None
    if title is None and r0 is not None:
        title = (
            f"mhfgen bench, {r0.gpu} (cc {r0.compute_capability}), {r0.dtype}, "
            f"torch {r0.torch}, triton {r0.triton}, {r0.date}"
        )
        if r0.compute_capability == "none":
            title += f"\n{CPU_LABEL}"
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
