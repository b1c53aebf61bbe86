"""The paper authors' Triton kernel as a peer of `mhfgen bench`: forward and backward.

The authors publish their FlashMHF kernel in the public GitHub repository
FoundationResearch/FlashMHF, file `kernels/triton/flash_mlp_moe.py`. That repository
carries no licence, so mhfgen does not ship a copy: fetch the file and name it with
`mhfgen bench --authors-kernel PATH` (or the environment variable MHFGEN_AUTHORS_KERNEL),
and the method `authors` runs it beside mhfgen's kernels, in the same process and on the
same inputs.

What the file must provide: `FlashMLPFunction`, a torch.autograd.Function whose
`apply(Q, K, U, V, R)` returns O = sum_e R[..., e] (silu(Q K_e^T) * (Q U_e^T)) V_e, the
same op as mhfgen.flash_mhf, with

    Q, O (B, H, L, D), K/U/V (Hkv, E, De, D), R (B, H, L, E)

(heads before tokens, where mhfgen's q and r are (B, L, H, D) and (B, L, H, E)).
`to_authors_layout` makes the bench's inputs contiguous in that layout once, before any
timing, so the kernel is timed on the layout it was written for.

Limits of that kernel, checked before a row is built (`unsupported`): bf16 only, a
power-of-two head_dim (its tiles are tl.arange(0, HEAD_DIM)), an expert width that is a
multiple of 64, and a CUDA GPU (Triton's interpreter does not multiply bf16). Its
backward autotunes its tile sizes on the first call, in the bench's untimed warm-up.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

#: the environment variable naming the kernel file when --authors-kernel is not given
ENV_VAR = "MHFGEN_AUTHORS_KERNEL"
#: the file in the authors' repository, for error messages and --help
SOURCE = "kernels/triton/flash_mlp_moe.py of the GitHub repository FoundationResearch/FlashMHF"
#: the module name the file is imported under (one per path)
_MODULE = "_mhfgen_authors_kernel"

_path: Path | None = None
_modules: dict[Path, object] = {}


def configure(path: str | os.PathLike | None) -> None:
    """Use the kernel file at `path` (None: the environment variable's, if any)."""
    global _path
    _path = Path(path).expanduser().resolve() if path else None


def kernel_path() -> Path | None:
    """The configured kernel file, else MHFGEN_AUTHORS_KERNEL's, else None."""
    if _path is not None:
        return _path
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser().resolve() if env else None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _load(path: Path):
    """Import the kernel file (once per path) and return its FlashMLPFunction."""
    module = _modules.get(path)
    if module is None:
        name = f"{_MODULE}_{len(_modules)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Triton's JIT looks kernels' modules up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _modules[path] = module
    function = getattr(module, "FlashMLPFunction", None)
    if function is None or not hasattr(function, "apply"):
        raise ImportError(f"{path} defines no FlashMLPFunction (expected {SOURCE})")
    return function


def available() -> str | None:
    """None when the authors' kernel can run here (a file is named, it imports and
    defines FlashMLPFunction, a CUDA GPU is visible), else the reason, one line."""
    path = kernel_path()
    if path is None:
        return f"no kernel file: fetch {SOURCE} and pass --authors-kernel PATH (or set {ENV_VAR})"
    if not path.is_file():
        return f"the authors' kernel file {path} does not exist"
    if not _has_cuda():
        return "the authors' kernel needs a CUDA GPU (it runs bf16, which Triton's interpreter cannot multiply)"
    try:
        _load(path)
    except Exception as exc:  # NOTE: any import failure is the reason, on one line
        return f"the authors' kernel file {path} does not import: {type(exc).__name__}: {exc}"[:300]
    return None


def unsupported(dtype: str, head_dim: int, expert_dim: int) -> str | None:
    """Why the authors' kernel cannot run a problem of these sizes (None: it can)."""
    if dtype != "bfloat16":
        return f"the authors' kernel takes bfloat16 only, not {dtype}"
    if head_dim & (head_dim - 1):
        return f"the authors' kernel takes power-of-two head dims, not {head_dim}"
    if expert_dim % 64:
        return f"the authors' kernel takes expert widths that are multiples of 64, not {expert_dim}"
    return None


def to_authors_layout(q, r):
    """q (B, L, H, D) and r (B, L, H, E) as contiguous (B, H, L, D) and (B, H, L, E) copies,
    leaf tensors that keep requires_grad."""
    q_t = q.detach().transpose(1, 2).contiguous().requires_grad_(q.requires_grad)
    r_t = r.detach().transpose(1, 2).contiguous().requires_grad_(r.requires_grad)
    return q_t, r_t


def flash_mhf(q_t, k, u, v, r_t):
    """O (B, H, L, D) through the authors' FlashMLPFunction, with autograd; q_t, r_t in its
    layout (to_authors_layout), k/u/v (Hkv, E, De, D) as mhfgen's."""
    path = kernel_path()
    if path is None:
        raise RuntimeError(available())
    return _load(path).apply(q_t, k, u, v, r_t)
