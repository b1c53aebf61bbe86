"""Input checks for the FlashMHF core op, shared by the reference and the kernels.

Every error names the argument and what was expected, and is raised before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import DTYPES, FP8_STORAGE, MAX_HEAD_DIM, MIN_HEAD_DIM

#: the activation dtypes FP8 weights run with
FP8_ACTIVATIONS = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Problem:
    """Sizes of one call: q (B, L, H, D), k/u/v (Hkv, E, De, D), r (B, L, H, E).

    The one record of a problem's sizes as the tensors give them (batch and seqlen apart);
    the other size records say what they add: KernelSpec (dtype, target, no token count:
    what a kernel is compiled for), TuningProblem (a KernelSpec at a token count),
    TuningKey (a database row's flat key columns), verification.Case (a named Problem of
    the verify table), bench.BenchProblem (a benchmark row, sized by intermediate) and
    presets.Preset (a model's d_model and intermediate, which the others derive from).
    """

    batch: int
    seqlen: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    expert_dim: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seqlen

    @property
    def intermediate(self) -> int:
        return self.experts * self.expert_dim

    def flops(self, backward: bool = False) -> int:
        """Core FLOPs: 6 * tokens * H * I * D forward, 2x that again for the backward."""
        fwd = 6 * self.tokens * self.heads * self.intermediate * self.head_dim
        return 3 * fwd if backward else fwd


def _check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")


#: the kernels index a row (token x query head) and a head's offset (head x head stride)
#: in 32-bit integers; token offsets (batch x batch stride, position x position stride)
#: are 64-bit, so inputs past 2^31 elements run while these two stay below the limit
INT32_LIMIT = 2**31


def _int32_overrun(t: torch.Tensor) -> int:
    """The largest of (H - 1) x head stride and (X - 1) x last stride of a (B, L, H, X)
    tensor: the offsets the kernels compute in 32 bits (0 for other tensors)."""
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.numel():
        return 0
    return max((t.shape[2] - 1) * abs(t.stride(2)), (t.shape[3] - 1) * abs(t.stride(3)))


def head_offset_problem(name: str, t: torch.Tensor) -> str | None:
    """Why the (B, L, H, X) tensor `t` (q, r or dO) cannot be indexed by the kernels, or
    None: its last head, or its last element of a row, starts 2^31 elements or more in.
    A transposed view of a (B, H, L, X) buffer at millions of tokens is such a tensor; a
    contiguous copy is not (mhfgen.flash_mhf makes that copy itself: int32_safe)."""
    offset = _int32_overrun(t)
    if offset >= INT32_LIMIT:
        return (
            f"{name}'s strides {tuple(t.stride())} put a head or element offset "
            f"{offset} elements in, past the kernels' 32-bit head offsets (< 2^31): "
            f"pass {name}.contiguous()"
        )
    return None


def overruns_int32(t: torch.Tensor) -> bool:
    """Whether head_offset_problem refuses `t` (False for anything but a tensor)."""
    return _int32_overrun(t) >= INT32_LIMIT


def int32_safe(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a contiguous copy where head_offset_problem would refuse it. Anything but a
    tensor is returned as it is (the input checks name it)."""
    return t.contiguous() if overruns_int32(t) else t


def check_flash_mhf_inputs(q, k, u, v, r, *, allow_float64: bool = False) -> Problem:
    """Validate the core op's arguments and return their sizes.

    q: (B, L, H, D) with stride(-1) == 1; k, u, v: (Hkv, E, De, D); r: (B, L, H, E) in
    float32 or q's dtype. H % Hkv == 0, D in 16..256, all on one device, q/k/u/v one dtype,
    or k/u/v all float8_e4m3fn with q in bf16/fp16 (FP8 weights: their scales are checked
    by check_weight_scales).
    """
    _check_tensor("q", q, 4, "(B, L, H, D)")
    for name, w in (("k", k), ("u", u), ("v", v)):
        _check_tensor(name, w, 4, "(Hkv, E, De, D)")
    _check_tensor("r", r, 4, "(B, L, H, E)")
    B, L, H, D = q.shape
    Hkv, E, De, Dk = k.shape
    for name, w in (("u", u), ("v", v)):
        if w.shape != k.shape:
            raise ValueError(
                f"{name} must have the shape of k {tuple(k.shape)} (Hkv, E, De, D), "
                f"got {tuple(w.shape)}"
            )
    if Dk != D:
        raise ValueError(f"k, u, v must have head_dim D={D} of q in their last dim, got {Dk}")
    if r.shape != (B, L, H, E):
        raise ValueError(f"r must have shape (B, L, H, E) = {(B, L, H, E)}, got {tuple(r.shape)}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q's heads H={H} must be a multiple of k's kv heads Hkv={Hkv}")
    if E < 1 or De < 1:
        raise ValueError(f"k must have E >= 1 experts and De >= 1 expert width, got E={E}, De={De}")
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"q's head_dim D must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, got {D}")
    allowed = set(DTYPES.values()) | ({torch.float64} if allow_float64 else set())
    if q.dtype not in allowed:
        names = ", ".join(str(d) for d in sorted(allowed, key=str))
        raise TypeError(f"q has unsupported dtype {q.dtype}; expected one of {names}")
    fp8 = k.dtype == FP8_STORAGE
    if fp8 and q.dtype not in FP8_ACTIVATIONS:
        raise TypeError(f"FP8 weights take bfloat16 or float16 q, got {q.dtype}")
    for name, w in (("k", k), ("u", u), ("v", v)):
        if w.dtype != (FP8_STORAGE if fp8 else q.dtype):
            expected = f"k's dtype {FP8_STORAGE}" if fp8 else f"q's dtype {q.dtype}"
            raise TypeError(f"{name} must have {expected}, got {w.dtype}")
    if r.dtype not in (torch.float32, q.dtype):
        raise TypeError(f"r must be float32 or q's dtype {q.dtype}, got {r.dtype}")
    devices = {t.device for t in (q, k, u, v, r)}
    if len(devices) > 1:
        raise ValueError(f"q, k, u, v, r must be on one device, got {sorted(map(str, devices))}")
    if q.numel() and q.stride(-1) != 1:
        raise ValueError(
            f"q must have unit stride in its last dim (head_dim), got stride {q.stride()}"
        )
    if B * L * H >= INT32_LIMIT:
        raise ValueError(
            f"B * L * H = {B * L * H} rows (tokens x heads) pass the kernels' "
            f"32-bit row index: at most {INT32_LIMIT - 1} rows, that is "
            f"{(INT32_LIMIT - 1) // H} tokens at H = {H}; split the call"
        )
    if Hkv * E * De * D >= INT32_LIMIT:
        raise ValueError(
            f"k, u, v of {Hkv * E * De * D} elements each pass the kernels' "
            f"32-bit weight offsets (< 2^31)"
        )
    for name, t in (("q", q), ("r", r)):
        problem = head_offset_problem(name, t)
        if problem:
            raise ValueError(problem)
    return Problem(B, L, H, Hkv, D, E, De)


def check_weight_scales(k, scales) -> None:
    """FP8 weights and their scales go together: with k/u/v in float8_e4m3fn, `scales`
    must be a contiguous float32 (3, Hkv, E, De) tensor on k's device (the per-row scales
    of K, U and V, mhfgen.fp8); with 16-bit or fp32 weights it must be None."""
    fp8 = isinstance(k, torch.Tensor) and k.dtype == FP8_STORAGE
    if scales is None:
        if fp8:
            raise TypeError(
                "k, u, v in float8_e4m3fn need their per-row scales: call "
                "mhfgen.flash_mhf_fp8(q, k, u, v, r, scales) with scales (3, Hkv, E, De)"
            )
        return
    _check_tensor("scales", scales, 4, "(3, Hkv, E, De)")
    if not fp8:
        got = k.dtype if isinstance(k, torch.Tensor) else type(k).__name__
        raise TypeError(f"scales go with float8_e4m3fn weights; k is {got}")
    expected = (3, *k.shape[:3])
    if tuple(scales.shape) != expected:
        raise ValueError(
            f"scales must have shape (3, Hkv, E, De) = {expected}, got {tuple(scales.shape)}"
        )
    if scales.dtype != torch.float32:
        raise TypeError(f"scales must be float32, got {scales.dtype}")
    if scales.device != k.device:
        raise ValueError(f"scales must be on k's device {k.device}, got {scales.device}")
    if not scales.is_contiguous():
        raise ValueError("scales must be contiguous")


def check_layer_sizes(
    d_model: int, n_heads: int, intermediate_size: int, n_experts: int, n_kv_heads: int
) -> None:
    """Constructor checks of the FlashMHF layer (d % H, I % E, H % Hkv, head_dim range)."""
    for name, value in (
        ("d_model", d_model),
        ("n_heads", n_heads),
        ("intermediate_size", intermediate_size),
        ("n_experts", n_experts),
        ("n_kv_heads", n_kv_heads),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    if intermediate_size % n_experts:
        raise ValueError(
            f"intermediate_size ({intermediate_size}) must be divisible by n_experts ({n_experts})"
        )
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    head_dim = d_model // n_heads
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim = d_model / n_heads = {head_dim} must be in {MIN_HEAD_DIM}..{MAX_HEAD_DIM}"
        )


_validated: set = set()


def check_flash_mhf_inputs_cached(q, k, u, v, r) -> None:
    """check_flash_mhf_inputs, remembered per call signature (shapes, strides, dtypes,
    devices of the five tensors): a repeated call costs a set lookup, not the checks."""
    try:
        key = tuple((t.shape, t.stride(), t.dtype, t.device) for t in (q, k, u, v, r))
    except AttributeError:  # not tensors: the checks name the argument
        check_flash_mhf_inputs(q, k, u, v, r)
        raise
    if key in _validated:
        return
    check_flash_mhf_inputs(q, k, u, v, r)
    if len(_validated) > 4096:
        _validated.clear()
    _validated.add(key)
