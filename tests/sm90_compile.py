"""Compile a generated Triton-language kernel for sm90 on any machine (no GPU needed) and
report what its PTX holds. Run in a process of its own with TRITON_INTERPRET=0: a process
that has run Triton's interpreter cannot compile (its language module is patched).

    python tests/sm90_compile.py STEM SPEC_JSON CONFIG_JSON  ->  one JSON line
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def compile_report(stem: str, spec, config) -> dict:
    """{'shared': bytes, 'registers', 'spill_bytes', 'wgmma': n, 'tma_loads': n,
    'tma_reduces': n, 'pdl_waits', 'pdl_launches', 'l2_prefetches',
    'memory_ops_before_wait'} of the kernel of (stem, spec, config), compiled in a
    subprocess."""
    return _in_subprocess(
        [str(Path(__file__).resolve()), stem, _spec_json(spec), config.to_json()],
        f"{stem} {config.describe()}",
    )


_GLUON = """
import dataclasses, importlib, json, sys
from mhfgen.spec import KernelSpec
module = importlib.import_module(sys.argv[1])
spec = KernelSpec(**json.loads(sys.argv[2]))
config = getattr(module, sys.argv[3])(**json.loads(sys.argv[4]))
print(json.dumps(dataclasses.asdict(module.compile_sm90(spec, config))))
"""


def gluon_report(module, spec, config):
    """`module.compile_sm90(spec, config)` (a Gluon kernel module's CompileReport), run in
    a fresh process with TRITON_INTERPRET=0: in a process whose interpreter runs have
    patched Triton's modules, a Gluon compile can see its descriptors as plain values."""
    from mhfgen.kernels.sm90 import CompileReport

    report = _in_subprocess(
        ["-c", _GLUON, module.__name__, _spec_json(spec), type(config).__name__, config.to_json()],
        f"{module.__name__} {config.describe()}",
    )
    return CompileReport(**report)


def _spec_json(spec) -> str:
    import dataclasses

    return json.dumps(dataclasses.asdict(spec))


def _in_subprocess(args: list, what: str) -> dict:
    """The JSON object printed last by `python ARGS` run with TRITON_INTERPRET=0."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=600
    )
    if out.returncode:
        raise AssertionError(f"sm90 compile of {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main(stem: str, spec_json: str, config_json: str) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mhfgen import registry
    from mhfgen.codegen import load_kernel
    from mhfgen.kernels.sm90 import ptxas_usage
    from mhfgen.spec import KernelSpec

    spec = KernelSpec(**json.loads(spec_json))
    variant = registry.get(stem)
    config = variant.check(spec, variant.config_from_dict(json.loads(config_json)))
    kernel = load_kernel(stem, spec, config)
    narrow = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[spec.activation_dtype]
    fp32 = {"DQ", "DR", "R", "SCALES"} | (
        {"DK", "DU", "DV"} if getattr(config, "token_splits", 1) > 1 else set()
    )
    if "OUT" in kernel.arg_names:  # the forward's split path: O is the fp32 workspace
        fp32.add("O")
    signature = {}
    for name in kernel.arg_names:
        if name in ("BLOCK_M", "BLOCK_N"):
            signature[name] = "constexpr"
        elif name == "COUNTERS":
            signature[name] = "*i32"
        elif name in ("K", "U", "V") and spec.fp8_weights:
            signature[name] = "*fp8e4nv"
        elif name[0].isupper():
            signature[name] = "*fp32" if name in fp32 else f"*{narrow}"
        else:
            signature[name] = "i32"
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={"BLOCK_M": config.block_m, "BLOCK_N": config.block_n},
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", 90, 32),
        options={
            "num_warps": config.num_warps,
            "num_stages": config.num_stages,
            "launch_pdl": getattr(config, "pdl", False),
        },
    )
    ptx = compiled.asm["ptx"]
    wait = ptx.find("griddepcontrol.wait")
    signal = ptx.find("griddepcontrol.launch_dependents")
    registers, spills = ptxas_usage(ptx)
    print(
        json.dumps(
            {
                "shared": compiled.metadata.shared,
                "registers": registers,
                "spill_bytes": spills,
                "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
                "tma_loads": len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
                "tma_reduces": len(re.findall(r"cp\.reduce\.async\.bulk\.tensor", ptx)),
                "launch_pdl": compiled.metadata.launch_pdl,
                "pdl_waits": ptx.count("griddepcontrol.wait"),
                "pdl_launches": ptx.count("griddepcontrol.launch_dependents"),
                "l2_prefetches": ptx.count("prefetch.global.L2"),
                # global loads, stores and atomics issued before griddepcontrol.wait
                "memory_ops_before_wait": (
                    len(
                        re.findall(
                            r"\b(?:ld|st|atom|red)\.(?:global|shared)|\bcp\.async", ptx[:wait]
                        )
                    )
                    if wait >= 0
                    else None
                ),
                # loads that bypass L1 (.cg: the split reduction's partials) aside, the
                # global and asynchronous loads issued after launch_dependents
                "loads_after_signal": (
                    len(re.findall(r"\bcp\.async|\bld\.global(?!\.cg)", ptx[signal:]))
                    if signal >= 0
                    else None
                ),
            }
        )
    )


if __name__ == "__main__":
    _main(*sys.argv[1:4])
