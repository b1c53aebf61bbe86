"""What the launchers share: the spec of a call and the config it runs with."""
from __future__ import annotations

import contextlib
import os

import torch
import triton
from triton import knobs

from .. import device as _device
from ..dispatch import choose_config, reject_tuned
from ..spec import INTERPRETER, KernelSpec, LaunchConfig, dtype_name
from ..validation import Problem


#: every launcher's plan cache, so that clear_plans() can empty them all
_plan_caches: list[dict] = []
MAX_PLANS = 4096


def plan_cache() -> dict:
    """A launcher's cache of launch plans, keyed by the call's signature (see signature)."""
    cache: dict = {}
    _plan_caches.append(cache)
    return cache


def clear_plans() -> None:
    """Forget every cached launch plan (the dispatcher calls this when its choices change)."""
    for cache in _plan_caches:
        cache.clear()


def remember(cache: dict, key, plan):
    """Store `plan` under `key`, emptying a cache that grew past MAX_PLANS."""
    if len(cache) >= MAX_PLANS:
        cache.clear()
    cache[key] = plan
    return plan


def signature(t: torch.Tensor) -> tuple:
    """What a launch plan depends on for one tensor: shape, strides, dtype and device.

    NOTE: launchers cache their plan (validation, spec, config, compiled kernel, grid,
    strides) under the signatures of their arguments, so a repeated call costs a dict
    lookup and the launch: the host overhead bar is 10 us above a bare launch.
    """
    return t.shape, t.stride(), t.dtype, t.device


def plan_key(config, q, k, u, v, r, do=None) -> tuple:
    """The plan-cache key of a launcher call: the signatures of its tensors and the config.
    Arguments that are not tensors get the input checks' TypeError naming them, and a
    config that is not a LaunchConfig (a dict, say) a TypeError naming it."""
    if config is not None and type(config) is not LaunchConfig:
        raise TypeError(f"config must be a LaunchConfig, got {type(config).__name__}")
    try:
        key = (signature(q), signature(k), signature(u), signature(v), signature(r))
        return key + ((config,) if do is None else (signature(do), config))
    except AttributeError:
        from ..validation import check_flash_mhf_inputs

        check_flash_mhf_inputs(q, k, u, v, r)
        raise TypeError(f"do must be a torch.Tensor (B, L, H, D), got {type(do).__name__}"
                        ) from None


#: Triton releases whose launcher protocol DirectLaunch was written against and tested on
#: (CompiledKernel.run(gridX, gridY, gridZ, stream, function, packed_metadata,
#: launch_metadata, enter_hook, exit_hook, *every_parameter)); others take the JIT path
DIRECT_LAUNCH_TRITON = ("3.6.",)
#: MHFGEN_JIT_LAUNCH=1: launch every call through JITFunction.run (debugging)
JIT_LAUNCH_REQUESTED = os.environ.get("MHFGEN_JIT_LAUNCH", "") not in ("", "0")
#: whether launches reuse compiled binaries: a tested Triton, and no JIT launch requested
DIRECT_LAUNCH = triton.__version__.startswith(DIRECT_LAUNCH_TRITON) and not JIT_LAUNCH_REQUESTED


class DirectLaunch:
    """One kernel launch of a launch plan: kernel, grid, the arguments after the tensors
    and the launch options fixed; the tensors given per call, `launch(*tensors)`.

    `kernel[grid](*args, **meta)` (JITFunction.run) binds and specialises every argument
    and builds launch metadata on every call, 10 to 30 us of Python per launch on an H200
    host for these kernels' twenty-odd arguments. Here the first launch on a CUDA device
    goes through JITFunction.run and keeps the CompiledKernel it returns; later launches
    call that binary's own launcher (`CompiledKernel.run`, the C launcher Triton generated
    for it) with the same positional arguments JITFunction.run would pass, the way
    torch.compile's Inductor launches its Triton kernels.

    Why that is the same launch: whatever JITFunction.run derives from the arguments is
    fixed by the plan's key (the tensors' shapes, strides, dtypes and device fix the scalar
    arguments, their specialisation and the signature), except what is checked on every
    call, the JIT path taken where it differs: the 16-byte alignment of every data pointer
    (the binary is only reused when all are aligned, as they were when it was compiled)
    and Triton's launch hooks (a profiler that set one gets the JIT path and its metadata).
    The interpreter always takes the JIT path, and so does every launch where DIRECT_LAUNCH
    is off (a Triton release this was not tested on, or MHFGEN_JIT_LAUNCH=1).

    Every launch runs on the tensors' device: where the current CUDA device is another
    (a model spread over GPUs in one process), the launch is made under
    `torch.cuda.device(...)` of the tensors' device, as PyTorch's own operators do;
    `kernel[grid](...)` alone would launch on the current device with the other device's
    pointers.
    """

    __slots__ = ("kernel", "grid", "args", "meta", "tail", "compiled", "device")

    def __init__(self, kernel, grid: tuple, args: tuple, meta: dict) -> None:
        self.kernel, self.args, self.meta = kernel, args, meta
        self.grid = (tuple(grid) + (1, 1))[:3]
        self.tail = None  # the positional arguments after the tensors, constexprs included
        self.compiled = None  # the CompiledKernel of the first aligned CUDA launch
        self.device = -1  # the CUDA device of the tensors of that launch

    def __call__(self, *tensors: torch.Tensor) -> None:
        other = foreign_device(tensors[0])
        if other is None:  # no context manager on the common path: it is the hot one
            self._launch(tensors, tensors[0].get_device())
        else:
            with torch.cuda.device(other):
                self._launch(tensors, other)

    def _launch(self, tensors: tuple, device: int) -> None:
        """Launch on the current device, which is the tensors' device (or the CPU: -1)."""
        compiled = self.compiled
        ptrs = 0
        if device >= 0:
            for t in tensors:
                ptrs |= t.data_ptr()
        if compiled is not None and not ptrs & 15 and _no_launch_hooks():
            g0, g1, g2 = self.grid
            compiled.run(g0, g1, g2, torch._C._cuda_getCurrentRawStream(device),
                         compiled.function, compiled.packed_metadata, None, None, None,
                         *tensors, *self.tail)
            return
        result = self.kernel[self.grid](*tensors, *self.args, **self.meta)
        if (compiled is None and device >= 0 and not ptrs & 15 and DIRECT_LAUNCH
                and hasattr(result, "packed_metadata")):
            self.tail = self._tail(tensors)
            self.device = device
            self.compiled = result

    def _tail(self, tensors: tuple) -> tuple:
        """The kernel's parameters after the tensors, in signature order, as
        JITFunction.run passes them to the binary (constexprs and defaults included)."""
        names = set(self.kernel.arg_names)
        params = {k: v for k, v in self.meta.items() if k in names}
        bound = self.kernel.signature.bind(*tensors, *self.args, **params)
        bound.apply_defaults()
        return tuple(bound.arguments.values())[len(tensors):]


def foreign_device(t: torch.Tensor) -> int | None:
    """`t`'s CUDA device where it is not the current one (a Triton launch, which goes to
    the current device, needs a guard there), else None (CPU tensors included)."""
    device = t.get_device()
    if device < 0 or device == torch.cuda.current_device():
        return None
    return device


def on_device_of(t: torch.Tensor):
    """A context in which a Triton launch runs on `t`'s device: `torch.cuda.device(...)`
    where the current CUDA device is another one (foreign_device), else nothing."""
    device = foreign_device(t)
    return contextlib.nullcontext() if device is None else torch.cuda.device(device)


def _no_launch_hooks() -> bool:
    """Whether no Triton launch hook is set (a profiler such as Proton sets them)."""
    runtime = knobs.runtime
    return not (getattr(runtime.launch_enter_hook, "calls", True)
                or getattr(runtime.launch_exit_hook, "calls", True))


def contiguous_strides(shape: tuple) -> tuple:
    """The strides of a contiguous tensor of `shape`."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(1, size)
    return tuple(reversed(strides))


#: what a bfloat16 call on CPU tensors gets instead of a wrong answer
BF16_INTERPRETER_ERROR = (
    "mhfgen kernels cannot run bfloat16 on CPU tensors: Triton's interpreter does not "
    "multiply bfloat16 correctly (its results are wrong, not merely imprecise). Use "
    "float32 or float16 on the CPU, backend='torch' (the PyTorch reference, any dtype), "
    "or a CUDA device")


def spec_of(problem: Problem, q: torch.Tensor) -> KernelSpec:
    """The KernelSpec a call with these sizes and q's dtype and device needs; TypeError
    for bfloat16 on the CPU (BF16_INTERPRETER_ERROR)."""
    target = _device.target(q.device)
    if q.dtype == torch.bfloat16 and target == INTERPRETER:
        raise TypeError(BF16_INTERPRETER_ERROR)
    return KernelSpec(problem.heads, problem.kv_heads, problem.head_dim, problem.experts,
                      problem.expert_dim, dtype_name(q.dtype), target)


def resolve_config(kernel: str, spec: KernelSpec, problem: Problem, q: torch.Tensor,
                   config: LaunchConfig | None) -> LaunchConfig:
    """`config` if given (checked against the spec), else the dispatcher's choice."""
    if config is None:
        return choose_config(kernel, spec, problem.tokens, q.device)
    if not isinstance(config, LaunchConfig):
        raise TypeError(f"config must be a LaunchConfig, got {type(config).__name__}")
    config.check_for(spec)
    return config


def first_launch(kernel: str, make_plan, run, inputs: tuple, config: LaunchConfig | None):
    """(plan, outputs) of a call signature's first call: `make_plan(config)` (check,
    choose, compile) and `run(plan)` (allocate, launch).

    A tuned config that fails there (a compile error, too many resources for this GPU, a
    launch error) is not the caller's fault: where the dispatcher chose it (`config` is
    None) and it came from a tuning database, mhfgen.dispatch.reject_tuned logs it once
    and puts the built-in heuristic in its place, and the call is made again with that.
    Errors of the inputs, of a config the caller passed and of the heuristic propagate.
    """
    try:
        plan = make_plan(config)
        return plan, run(plan)
    except Exception as exc:
        if config is not None or not _tuned_config_failed(kernel, inputs, exc):
            raise
    plan = make_plan(None)
    return plan, run(plan)


def _tuned_config_failed(kernel: str, inputs: tuple, error: Exception) -> bool:
    """Whether `error` came from a tuned config (reported to the dispatcher, which
    replaces it) rather than from the inputs or the heuristic."""
    from ..validation import check_flash_mhf_inputs

    q = inputs[0]
    try:
        problem = check_flash_mhf_inputs(*inputs)
        spec = spec_of(problem, q)
    except (TypeError, ValueError):
        return False  # the inputs' own error, raised as it is
    return reject_tuned(kernel, spec, problem.tokens, q.device, error)


_allocator_set = False


def ensure_descriptor_allocator(device: torch.device) -> None:
    """Tensor descriptors made inside a kernel need global scratch memory: give Triton a
    torch-backed allocator once per process (the interpreter needs none)."""
    global _allocator_set
    if _allocator_set or device.type != "cuda":
        return
    import triton

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda")

    triton.set_allocator(alloc)
    _allocator_set = True


_poison = False


def set_poison(enabled: bool) -> None:
    """Debugging aid for tests: fill every output buffer the launchers allocate with NaN
    before the kernel runs, so an element the kernel fails to write shows up as NaN."""
    global _poison
    _poison = enabled


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or a NaN-filled tensor while poisoning is on (see set_poison)."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def grad_plan_inputs(q: torch.Tensor, do: torch.Tensor) -> tuple[bool, tuple]:
    """For a backward launcher's plan: whether `do` needs a contiguous copy in q's dtype
    (it has another dtype or a non-unit last stride) and the (batch, seq, head) strides the
    kernel will see."""
    if do.shape != q.shape:
        raise ValueError(f"do must have q's shape {tuple(q.shape)}, got {tuple(do.shape)}")
    copy = do.dtype != q.dtype or (do.numel() > 0 and do.stride(-1) != 1)
    strides = contiguous_strides(tuple(do.shape)) if copy else do.stride()
    return copy, strides[:3]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def intermediate_blocks(spec: KernelSpec, block_n: int) -> int:
    """Tiles of BLOCK_N columns over I: I / BLOCK_N when BLOCK_N divides De, else
    ceil(De / BLOCK_N) masked tiles per expert."""
    if spec.expert_dim % block_n == 0:
        return spec.intermediate // block_n
    return spec.experts * cdiv(spec.expert_dim, block_n)


_counters: dict = {}


def split_counters(n: int, device: torch.device) -> torch.Tensor:
    """n int32 zeros for the tickets of a split reduction (the forward with inter_splits).

    The kernel's last program of each row block resets its counter to zero, so one buffer
    per (device, stream) serves every launch without a memset; launches on one stream run
    in order, launches on two streams get two buffers. While a CUDA graph is captured the
    buffer is allocated fresh (its zeroing becomes part of the graph, its memory the
    graph's), never cached.
    """
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros(n, dtype=torch.int32, device=device)
        # the raw stream handle: no torch.cuda.Stream object built per call (decode calls
        # come here every time, where host time is most of the call)
        key = (device, torch._C._cuda_getCurrentRawStream(device.index))
    else:
        key = (device, 0)
    counters = _counters.get(key)
    if counters is None or counters.numel() < n:
        counters = _counters[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return counters
