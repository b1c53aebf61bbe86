"""FP8 (e4m3) storage of FlashMHF's expert weights K, U and V.

A weight w of shape (Hkv, E, De, D) is stored as `data` (Hkv, E, De, D) in
torch.float8_e4m3fn and a float32 `scale` (Hkv, E, De), one per (kv head, expert, row):

    scale[h, e, j] = max_d |w[h, e, j, d]| / E4M3_MAX        (1 where the row is all zero)
    data[h, e, j, d] = e4m3(w[h, e, j, d] / scale[h, e, j])    (round to nearest even)
    w ~ dequantized = data * scale[..., None]

so each row's largest element maps to 448, e4m3's largest finite value. Rounding error,
per element, in exact arithmetic (e4m3: 3 mantissa bits; normal down to 2^-6, subnormal
spacing 2^-9):

    |w - dequantized| <= 2^-4 |w|          where |w| / scale >= 2^-6
    |w - dequantized| <= 2^-10 scale       below that (subnormals)

(ELEMENT_BOUND). Over a whole tensor of roughly uniform mantissas the relative Frobenius
error is about 2^-4 / sqrt(3) ~ 3.6% at worst and about 2% typically.

The kernels take the three weights of a layer as their FP8 data and one float32 tensor
`scales` (3, Hkv, E, De), the K, U and V scales stacked (quantize_experts, stack_scales):
mhfgen.flash_mhf_fp8(q, k8, u8, v8, r, scales) reads 1 byte per weight element and
converts in registers (weight-only FP8: the MMAs run in q's dtype). FlashMHF.quantize_fp8_()
(and mhfgen.layers.quantize_fp8_model for every FlashMHF layer of a model) stores a layer's
weights that way; its forward runs flash_mhf_fp8 where it can (no gradient wanted, an
sm89+ GPU or the interpreter) and dequantises to the activations' dtype elsewhere.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .spec import FP8_STORAGE

FP8_DTYPE = FP8_STORAGE
#: e4m3's largest finite value: a row's largest |w| is scaled to it
E4M3_MAX = 448.0
#: the per-element bound of the module doc: (relative part, absolute part in units of scale)
ELEMENT_BOUND = (2.0**-4, 2.0**-10)


@dataclass(frozen=True)
class Fp8Weight:
    """One expert weight in FP8: data (Hkv, E, De, D) float8_e4m3fn and scale (Hkv, E, De)
    float32, w ~ data * scale[..., None] (see the module doc)."""

    data: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """data * scale[..., None], computed in float32 and returned in `dtype`."""
        return (self.data.float() * self.scale.unsqueeze(-1)).to(dtype)


def quantize_fp8(w: torch.Tensor) -> Fp8Weight:
    """`w` (Hkv, E, De, D), any floating dtype, as an Fp8Weight with one float32 scale per
    (kv head, expert, row). TypeError for a non-floating tensor, ValueError for a shape
    that is not 4-D or for non-finite values (they have no e4m3 encoding with a scale)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        got = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"quantize_fp8 takes a floating-point tensor, got {got}")
    if w.dim() != 4:
        raise ValueError(f"quantize_fp8 takes a (Hkv, E, De, D) weight, got {tuple(w.shape)}")
    w32 = w.detach().float()
    if not torch.isfinite(w32).all():
        raise ValueError("quantize_fp8: the weight holds NaN or infinite values")
    amax = w32.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    data = (w32 / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    return Fp8Weight(data, scale)


def stack_scales(k: Fp8Weight, u: Fp8Weight, v: Fp8Weight) -> torch.Tensor:
    """The kernels' `scales` argument: the three weights' scales stacked, (3, Hkv, E, De)
    float32, contiguous. ValueError where their shapes differ."""
    if not k.scale.shape == u.scale.shape == v.scale.shape:
        shapes = [tuple(w.scale.shape) for w in (k, u, v)]
        raise ValueError(f"stack_scales: k, u, v scales must have one shape, got {shapes}")
    return torch.stack((k.scale, u.scale, v.scale)).contiguous()


def quantize_experts(
    k: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k8, u8, v8, scales): the three expert weights (Hkv, E, De, D) quantised
    (quantize_fp8), in the form mhfgen.flash_mhf_fp8 takes them."""
    weights = [quantize_fp8(w) for w in (k, u, v)]
    return (*(w.data for w in weights), stack_scales(*weights))


def dequantize_experts(
    k8: torch.Tensor, u8: torch.Tensor, v8: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k, u, v in `dtype` from their FP8 data and stacked scales (quantize_experts' output)."""
    return tuple(Fp8Weight(w, s).dequantize(dtype) for w, s in zip((k8, u8, v8), scales))


def transpose_v(v8: torch.Tensor) -> torch.Tensor:
    """V's FP8 data (Hkv, E, De, D) as the K-major B operand of an FP8 tensor-core product
    p8 @ V8: (Hkv, E, D, De), contiguous, De innermost (an e4m3 wgmma reads both of its
    shared-memory operands K-major; for O += p V the reduction runs over De). The same
    bytes, moved: at the 1.3B preset (Hkv 16, E 22, De 256, D 128) 11.5 MB read and
    written."""
    if v8.dim() != 4:
        raise ValueError(f"transpose_v takes a (Hkv, E, De, D) weight, got {tuple(v8.shape)}")
    return v8.transpose(-1, -2).contiguous()


def column_factors(scales: torch.Tensor) -> torch.Tensor:
    """The per-intermediate-row factors the FP8-arithmetic forward reads, from the stacked
    scales (3, Hkv, E, De) of K, U and V: (2, Hkv, E, De) float32, contiguous, holding
    k_scale and u_scale * v_scale (G's column scale and V's row scale meet in one product
    per intermediate row, so the kernel multiplies by it once)."""
    if scales.dim() != 4 or scales.shape[0] != 3:
        raise ValueError(f"column_factors takes (3, Hkv, E, De) scales, got {tuple(scales.shape)}")
    s = scales.float()
    return torch.stack((s[0], s[1] * s[2])).contiguous()


#: (kind, tensor) -> (the tensor's version counter when derived, the derived tensor);
#: entries go with their tensor (keyed by identity, held weakly)
_kept = {kind: torch.utils.weak.WeakIdKeyDictionary() for kind in ("vt", "cols", "bounds")}


def _capturing(source: torch.Tensor) -> bool:
    """Whether work on `source` would now be recorded into a CUDA graph being captured on
    the current stream rather than run."""
    return source.is_cuda and torch.cuda.is_current_stream_capturing()


def _derived(kind: str, source: torch.Tensor, make, *others: torch.Tensor) -> torch.Tensor:
    """make(source, *others), made once per tensor object and version counter of each and
    kept while `source` lives (keyed by it; the others are held weakly and compared by
    identity and version). An inference tensor has no version counter: made on every
    call.

    Under CUDA graph capture a kept tensor made before is used as it is, but a new one is
    made without being kept: its kernels are only recorded, so its values exist only once
    the graph replays (each replay makes it again), and its memory is the graph's. Kept,
    it would hand calls outside the graph a tensor never written. A call before the
    capture (the usual warm-up) keeps the derivation out of the graph."""
    sources = (source, *others)
    if any(t.is_inference() for t in sources):
        return make(*sources)
    stamp = tuple(t._version for t in sources)
    entry = _kept[kind].get(source)
    if (
        entry is not None
        and entry[0] == stamp
        and all(ref() is t for ref, t in zip(entry[1], others))
    ):
        return entry[2]
    derived = make(*sources)
    if not _capturing(source):
        _kept[kind][source] = (stamp, tuple(weakref.ref(t) for t in others), derived)
    return derived


def transposed_v(v8: torch.Tensor) -> torch.Tensor:
    """transpose_v(v8), made once per tensor and kept while the tensor lives: the cached
    copy is used again only for the same tensor object at the same version counter (an
    in-place write through PyTorch, `v8.copy_(...)` or `v8[...] = ...`, bumps it and the
    copy is made anew). A write PyTorch does not see (a raw pointer, a kernel of another
    library) is not detected: call forget_transposed() after one. An inference tensor
    (made under torch.inference_mode) has no version counter: its copy is made on every
    call, never kept."""
    return _derived("vt", v8, transpose_v)


def expert_bounds(k8: torch.Tensor, u8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The weights' side of a bound on the FP8-arithmetic forward's activations, per (kv
    head, expert): (Hkv, E) float32, contiguous,

        c[h, e] = max_j |K~[h, e, j]| |U~[h, e, j]| v_scale[h, e, j]

    over the expert's rows j, with K~ = k8 * k_scale and U~ = u8 * u_scale the dequantised
    rows and |.| the Euclidean norm. Since |silu(s)| <= |s| and by Cauchy-Schwarz, a
    query row q~ routed with weight r[e] has every activation of expert e, p'[j] =
    silu(q~ . K~_j) (q~ . U~_j) r[e] v_scale[j], bounded by |q~|^2 |r[e]| c[h, e]: the
    kernel's act_scale='bound' scales each row's activations to e4m3 by that bound
    (mhfgen.reference.flash_mhf_w8a8). k8, u8: (Hkv, E, De, D) float8_e4m3fn; scales:
    (3, Hkv, E, De) float32 (stack_scales)."""
    if scales.dim() != 4 or scales.shape[0] != 3 or k8.shape[:3] != scales.shape[1:]:
        raise ValueError(
            f"expert_bounds takes (Hkv, E, De, D) weights and their (3, Hkv, E, De) scales, "
            f"got {tuple(k8.shape)} and {tuple(scales.shape)}"
        )
    s = scales.float()
    k_norm = k8.float().norm(dim=-1) * s[0]
    u_norm = u8.float().norm(dim=-1) * s[1]
    return (k_norm * u_norm * s[2]).amax(dim=-1).contiguous()


def kept_column_factors(scales: torch.Tensor) -> torch.Tensor:
    """column_factors(scales), kept per tensor and version as transposed_v keeps V^T."""
    return _derived("cols", scales, column_factors)


def kept_expert_bounds(k8: torch.Tensor, u8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """expert_bounds(k8, u8, scales), kept per k8 tensor while the three tensors are the
    same objects at the same versions (as transposed_v keeps V^T)."""
    return _derived("bounds", k8, expert_bounds, u8, scales)


def forget_transposed() -> None:
    """Drop every kept derived operand: transposed V (transposed_v), column factors
    (kept_column_factors) and expert bounds (kept_expert_bounds)."""
    for cache in _kept.values():
        cache.clear()
