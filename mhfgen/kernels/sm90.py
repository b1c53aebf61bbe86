"""What the Gluon kernels for Hopper (sm90) share: the (tokens, H * D) view TMA reads rows
through, and ptxas's register and spill report of a compiled kernel."""
from __future__ import annotations

import re
import subprocess
import tempfile
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
