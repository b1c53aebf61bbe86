"""What the Gluon kernels for Hopper (sm90) share: the (tokens, H * D) view TMA reads rows
through, ptxas's register and spill report of a compiled kernel, and compiling a kernel
for sm90 on a machine without a GPU (the tests' compile checks)."""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch


def rows_view(q: torch.Tensor) -> torch.Tensor:
    """q (B, L, H, D) as the (B * L, H * D) view TMA reads; a contiguous copy when the
    strides do not allow it (TMA needs 16-byte aligned base and row stride)."""
    B, L, H, D = q.shape
    sb, sl, sh, _ = q.stride()
    ok = (sh == D and (B == 1 or sb == L * sl) and (sl * q.element_size()) % 16 == 0
          and q.data_ptr() % 16 == 0)
    if not ok:
        q = q.contiguous()
        sl = H * D
    return q.as_strided((B * L, H * D), (sl, 1))


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill-store bytes) that `ptxas -v` reports for sm_90a."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ptx"
        path.write_text(ptx)
        out = subprocess.run([knobs.nvidia.ptxas.path, "-v", "--gpu-name=sm_90a", str(path),
                              "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True, check=True)
    log = out.stderr + out.stdout
    registers = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return (max(map(int, registers)) if registers else -1,
            max(map(int, spills)) if spills else 0)


@dataclass(frozen=True)
class CompileReport:
    """What compiling one (spec, config) of a Gluon kernel for sm90 gave: shared memory the
    kernel allocates, registers per thread and spilled bytes (ptxas -v), the cubin's size,
    and the counts of wgmma and TMA instructions in its PTX."""

    shared: int
    registers: int
    spill_bytes: int
    cubin_bytes: int
    wgmma: int
    tma_loads: int


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
    registers, spills = ptxas_usage(ptx)
    return CompileReport(compiled.metadata.shared, registers, spills,
                         len(compiled.asm["cubin"]), len(re.findall(r"wgmma\.mma_async", ptx)),
                         len(re.findall(r"cp\.async\.bulk\.tensor", ptx)))


def backward_descriptors(spec, layouts: dict, rows: int) -> dict:
    """Host TMA descriptors for a backward kernel's compile: q_desc and do_desc over a
    (rows, H * D) tensor in `layouts['rows']`, k/u/v_desc over (Hkv * I, D) in
    `layouts['weights']` (CPU tensors of the spec's dtype)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    D = spec.head_dim
    q = torch.empty(rows, spec.heads * D, dtype=spec.torch_dtype)
    w = torch.empty(spec.kv_heads * spec.intermediate, D, dtype=spec.torch_dtype)
    out = {f"{n}_desc": TensorDescriptor.from_tensor(q, *layouts["rows"]) for n in ("q", "do")}
    out.update({f"{n}_desc": TensorDescriptor.from_tensor(w, *layouts["weights"])
                for n in ("k", "u", "v")})
    return out
