"""What the Gluon kernels for Hopper (sm90) share: the SM's limits, the (tokens, H * D) view
TMA reads rows through, ptxas's register and spill report of a compiled kernel, compiling
a kernel for sm90 on a machine without a GPU (the tests' compile checks), and, for the
three backward kernels, what they support, their register split and their launch."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tiling import even_tiles, pow2_ceil
from .launch import DirectLaunch, Tma

#: dynamic shared memory a block may allocate on sm90 (227 KiB)
SM90_SHARED_MEMORY = 232448
#: 32-bit registers per SM
SM90_REGISTERS = 65536
#: what the Gluon backward kernels take: dtypes, head dims (multiples of 16 in this range,
#: padded in the kernel to 64 or 128: backward_head_dim_pad), and the weight-tile rows
#: (one warpgroup's wgmma M) that an expert's width must be a multiple of
BACKWARD_DTYPES = ("bfloat16", "float16")
BACKWARD_HEAD_DIMS = range(48, 129, 16)
BACKWARD_BLOCK_N = 64


def backward_unsupported(spec, tokens: int | None = None) -> str | None:
    """Why a Gluon backward kernel (two consumer warpgroups and a TMA producer, 64-row
    weight tiles) cannot run `spec` (at any token count), or None."""
    if not spec.target.startswith("sm9"):
        return f"Gluon wgmma kernel for sm90 (Hopper); target is {spec.target}"
    if spec.dtype not in BACKWARD_DTYPES:
        return f"bf16/fp16 only; dtype is {spec.dtype}"
    if spec.head_dim not in BACKWARD_HEAD_DIMS:
        return (
            f"head_dim must be a multiple of 16 from 48 to 128 (below 48, padding to 64 "
            f"would at least double the MMA work); it is {spec.head_dim}"
        )
    if not even_tiles(spec, BACKWARD_BLOCK_N):
        return f"expert_dim must be a multiple of {BACKWARD_BLOCK_N}; it is {spec.expert_dim}"
    return None


def backward_head_dim_pad(spec) -> int:
    """The head_dim width of a Gluon backward kernel's tiles: 64 or 128, the spec's
    head_dim rounded up to a power of two (at least 64: the kernels cut it in halves or
    64-column chunks).

    The kernels pad D to this width: TMA loads a block this wide, so the weights' columns
    past D, beyond the (Hkv * I, D) view, arrive as zeros, and every product that sums
    over head_dim (S = q K^T, A = q U^T, dP = dO V^T) has a zero-padded weight operand and
    is exact. q's and dO's padded columns are the next head's first columns (zeros past
    the last head): they only reach the padded columns of dK, dU, dV, which are masked
    out of every store. dq's padded columns (dS K + dA U) are zero and never stored."""
    return max(64, pow2_ceil(spec.head_dim))


def backward_pad_params(spec) -> dict:
    """The static template parameter of a padded head_dim ({'head_dim_pad': width}), or
    nothing where head_dim is 64 or 128: those specs render the code they rendered before
    padding existed, so their stored winners keep their code hash."""
    pad = backward_head_dim_pad(spec)
    return {"head_dim_pad": pad} if pad != spec.head_dim else {}


def backward_register_cap() -> int:
    """A backward launch's per-thread register cap: the SM's registers over 12 warps (two
    consumer warpgroups and the producer's, rounded to a warpgroup), down to a multiple
    of 8. setmaxnreg then moves registers between the partitions."""
    return min(255, SM90_REGISTERS // (32 * 12)) // 8 * 8


def backward_options() -> dict:
    """A backward launch's options: 4 warps (the default partition's warpgroup; the
    kernel's warp_specialize adds the others) under backward_register_cap."""
    return dict(num_warps=4, maxnreg=backward_register_cap())


def backward_resource_problems(
    shared: int, worker: str, worker_regs: int, producer_regs: int, first: str, least: int
) -> list[str]:
    """What does not fit of a backward config: `shared` bytes of shared memory, and a
    register split where the worker warpgroup (its field `worker`) and the producer take
    `worker_regs` + `producer_regs` per thread and the default partition (`first`) needs
    at least `least`."""
    problems = []
    if shared > SM90_SHARED_MEMORY:
        problems.append(f"needs {shared} bytes of shared memory")
    if 128 * (worker_regs + producer_regs) > SM90_REGISTERS - 128 * least:
        problems.append(
            f"{worker} + producer_regs = {worker_regs} + {producer_regs} leave "
            f"{first} fewer than {least} registers"
        )
    return problems


class BackwardLaunch:
    """One launch of a Gluon backward kernel, whose arguments are the descriptors of q and
    dO (rows) and of k, u, v (weights), r, the outputs, then fixed scalars and
    constexprs: the TMA operands are named per call over the tensors, the rest fixed, and
    the launch after the first calls the compiled binary with the descriptors encoded
    once per address (kernels.launch.DirectLaunch)."""

    def __init__(self, kernel, grid: tuple, scalars: tuple, meta: dict, layouts: dict) -> None:
        self.kernel, self.grid, self.scalars, self.meta = kernel, grid, scalars, meta
        self.rows_layout, self.weights_layout = layouts["rows"], layouts["weights"]
        self.launch = DirectLaunch(kernel, grid, scalars, meta)

    def arguments(self, q, k, u, v, r, do, *outputs) -> tuple:
        """The kernel's positional arguments for one call (the TMA operands as Tma)."""
        D = q.shape[-1]
        rows = [Tma(rows_view(t), *self.rows_layout) for t in (q, do)]
        weights = [Tma(w.view(-1, D), *self.weights_layout) for w in (k, u, v)]
        return (*rows, *weights, r, *outputs, *self.scalars)

    def __call__(self, q, k, u, v, r, do, *outputs) -> None:
        self.launch.launch_all(self.arguments(q, k, u, v, r, do, *outputs))


def gluon_dtype(spec):
    """The Gluon element type of the spec's dtype (bfloat16 or float16)."""
    from triton.experimental.gluon import language as gl

    return {"bfloat16": gl.bfloat16, "float16": gl.float16}[spec.dtype]


def nvmma_block(spec, rows: int, cols: int) -> tuple[list, object]:
    """A TMA descriptor's block [rows, cols] of the spec's dtype and the default
    NVMMASharedLayout of that block, as TensorDescriptor.from_tensor takes them."""
    from triton.experimental.gluon import language as gl

    return [rows, cols], gl.NVMMASharedLayout.get_default_for([rows, cols], gluon_dtype(spec))


def routing_fp32(r: torch.Tensor) -> torch.Tensor:
    """r (B, L, H, E) as every Gluon kernel reads it: float32, converted once per call
    (to a contiguous tensor) where the caller passed it in q's dtype.

    NOTE: the Gluon kernels are compiled and proven with an fp32 routing pointer only; a
    bf16/fp16 r reaching the forward's kernel gave non-finite outputs on an H100 (the
    verification matrix of `mhfgen verify --matrix` covers both forms for every variant).
    The copy reads and writes B * L * H * E elements, a small fraction of the call's
    traffic (docs/VERIFY.md gives the measured cost)."""
    if r.dtype == torch.float32:
        return r
    return r.to(torch.float32, memory_format=torch.contiguous_format)


def rows_view(q: torch.Tensor) -> torch.Tensor:
    """q (B, L, H, D) as the (B * L, H * D) view TMA reads; a contiguous copy when the
    strides do not allow it (TMA needs 16-byte aligned base and row stride)."""
    B, L, H, D = q.shape
    sb, sl, sh, _ = q.stride()
    ok = (
        sh == D
        and (B == 1 or sb == L * sl)
        and (sl * q.element_size()) % 16 == 0
        and q.data_ptr() % 16 == 0
    )
    if not ok:
        q = q.contiguous()
        sl = H * D
    return q.as_strided((B * L, H * D), (sl, 1))


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) that `ptxas -v` reports for sm_90a."""
    return ptxas_report(ptx)[:2]


def ptxas_report(ptx: str) -> tuple[int, int, str]:
    """What one `ptxas -v --gpu-name=sm_90a` run says of `ptx`: registers per thread,
    spill-store bytes, and why it serialises the kernel's wgmma ('' where it keeps them
    asynchronous). A serialised kernel waits for every wgmma to finish before the next
    instruction: no product overlaps other work. ptxas does it to a whole function, for
    example when it finds too few registers to keep a wgmma's operands and accumulators
    apart from the code around it, or when other instructions read an accumulator that a
    pending wgmma may still write."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        out = subprocess.run(
            [
                knobs.nvidia.ptxas.path,
                "-v",
                "--gpu-name=sm_90a",
                str(path),
                "-o",
                str(Path(tmp) / "kernel.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    log = out.stderr + out.stdout
    registers = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    serialized = next(
        (
            " ".join(line.split("Potential Performance Loss:")[-1].split())
            for line in log.splitlines()
            if "wgmma.mma_async instructions are serialized" in line
        ),
        "",
    )
    return (
        max(map(int, registers)) if registers else -1,
        max(map(int, spills)) if spills else 0,
        serialized,
    )


@dataclass(frozen=True)
class CompileReport:
    """What compiling one (spec, config) of a Gluon kernel for sm90 gave: shared memory the
    kernel allocates, registers per thread and spilled bytes (ptxas -v), the cubin's size,
    and the counts of wgmma and TMA instructions in its PTX, of the wgmma whose operands
    are both e4m3 (FP8 tensor-core products), of the programmatic-dependent-launch
    instructions (griddepcontrol.wait and .launch_dependents) and L2 prefetches, and
    whether the launch asks for programmatic dependent launch (launch_pdl)."""

    shared: int
    registers: int
    spill_bytes: int
    cubin_bytes: int
    wgmma: int
    tma_loads: int
    fp8_wgmma: int = 0
    wgmma_serialized: str = ""
    pdl_waits: int = 0
    pdl_launches: int = 0
    l2_prefetches: int = 0
    launch_pdl: bool = False


def compile_gluon(kernel, args: dict, consts: dict, options: dict) -> CompileReport:
    """Compile the Gluon `kernel` for sm90 down to cubin on any machine (no GPU needed).
    The signature: the constexprs `consts`, the types of `args` (host descriptors over
    small CPU tensors, tensors, ints), i32 for every other argument."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    signature = {}
    for name in kernel.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in args:
            signature[name] = mangle_type(args[name])
        else:
            signature[name] = "i32"
    source = GluonASTSource(fn=kernel, signature=signature, constexprs=consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    registers, spills, serialized = ptxas_report(ptx)
    return CompileReport(
        compiled.metadata.shared,
        registers,
        spills,
        len(compiled.asm["cubin"]),
        len(re.findall(r"wgmma\.mma_async", ptx)),
        len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        len(re.findall(r"wgmma\.mma_async\S*\.e4m3\.e4m3", ptx)),
        serialized,
        ptx.count("griddepcontrol.wait"),
        ptx.count("griddepcontrol.launch_dependents"),
        ptx.count("prefetch.global.L2"),
        bool(compiled.metadata.launch_pdl),
    )


def backward_descriptors(spec, layouts: dict, rows: int) -> dict:
    """Host TMA descriptors for a backward kernel's compile: q_desc and do_desc over a
    (rows, H * D) tensor in `layouts['rows']`, k/u/v_desc over (Hkv * I, D) in
    `layouts['weights']` (CPU tensors of the spec's dtype)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    D = spec.head_dim
    q = torch.empty(rows, spec.heads * D, dtype=spec.torch_dtype)
    w = torch.empty(spec.kv_heads * spec.intermediate, D, dtype=spec.torch_dtype)
    out = {f"{n}_desc": TensorDescriptor.from_tensor(q, *layouts["rows"]) for n in ("q", "do")}
    out.update(
        {f"{n}_desc": TensorDescriptor.from_tensor(w, *layouts["weights"]) for n in ("k", "u", "v")}
    )
    return out
