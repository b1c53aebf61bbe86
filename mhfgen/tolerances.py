"""Accuracy bars of the kernels against the float64 reference, per dtype, in one place.

Errors are relative Frobenius norms, ||x - x_ref|| / ||x_ref||, with x_ref computed in
float64 from the same (rounded) inputs. bf16 figures are the bar of docs/CONTRACTS.md
(section 6); fp32 uses IEEE dots; fp16 keeps 3 more mantissa bits than bf16. FP8-weight dtypes
(mhfgen.spec.FP8_WEIGHT_DTYPES) take their activations' bars, except in kernels that
quantise the activations to FP8 too (FP8_ACTIVATIONS_BAR). A candidate kernel's bar comes
from tolerance_for(variant, ...), which knows which kernels those are.
"""

from __future__ import annotations

import torch

from .spec import FP8_WEIGHT_DTYPES

#: dtype name -> (forward output tolerance, tolerance of every gradient)
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-5),
    "float16": (1e-3, 2e-3),
    "bfloat16": (2.5e-3, 4e-3),
}


#: the forward output's bar for kernels that quantise the activations to FP8 as well as the
#: weights (W8A8: q per row and the activation tile per row in e4m3; a variant's
#: `quantises_activations`), against float64 on the dequantised weights. e4m3 keeps 3
#: mantissa bits: values 2^-4 apart relative to their size, a rounding error of up to 2^-4
#: and about 2^-4 / sqrt(3) ~ 3.6% rms per element. q's rounding alone puts ~3.7e-2 on the
#: output (it enters S and G both); with the activation tile's the scheme measured 4.3e-2 to
#: 4.5e-2 on make_inputs' data at D = 64, 96 and 128 (float64 emulation,
#: mhfgen.reference.flash_mhf_w8a8). The bar leaves a third above that.
FP8_ACTIVATIONS_BAR = 6e-2

#: a W8A8 kernel against the float64 emulation of its own arithmetic
#: (mhfgen.reference.flash_mhf_w8a8), whole tensor only. The two differ where an fp32 value
#: (tanh.approx in silu, fp32 products) lands on the other side of an e4m3 rounding than
#: its float64 twin, and by the tensor cores' FP8 accumulation (about 13-14 mantissa bits
#: at each k32 step). On an H100 the kernel measured 7.0e-3 to 9.2e-3 from the emulation on
#: three shapes; a missing rescale or a misplaced scale is off by far more. Rows are not
#: held to it: one flipped rounding of a row's running maximum moves that row's whole
#: scale, so a row can differ by the quantisation noise itself (up to 6.3e-2 measured).
FP8_EMULATION_BAR = 2e-2


#: the worst row of an output may be this many times the tensor's tolerance (row_error):
#: a row's error averages over D (or E) values only, not over the whole tensor
ROW_FACTOR = 4.0


def tolerance(dtype: str | torch.dtype, grad: bool = False, numel: int | None = None) -> float:
    """The bar for the forward output (grad=False) or a gradient (grad=True).

    With `numel`, the bar for a tensor of that many elements: the bar times
    1 + 2 / sqrt(2 * numel). The bars are statements about the error's root mean square,
    and the relative Frobenius error of N elements estimates it with a relative spread
    of about 1 / sqrt(2 N): two of those are allowed. This matters only for tiny outputs
    (one bf16 token of 4 heads x 96 values: 1.07x); at 1,000,000 elements it is 1.001x.
    The bf16 output bar is close to what any bf16 kernel measures: rounding the exact
    answer to bf16 costs about 1.7e-3 on Gaussian data, and rounding the activation tile
    P to bf16 for the tensor cores about as much again, in quadrature (2.35e-3)."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    # FP8 weights: measured against float64 on the dequantised weights, which the kernels
    # convert to the activations' dtype exactly (every e4m3 value is a bf16 and an fp16)
    fwd, bwd = TOLERANCES[FP8_WEIGHT_DTYPES.get(dtype, dtype)]
    return (bwd if grad else fwd) * small_tensor_allowance(numel)


def small_tensor_allowance(numel: int | None) -> float:
    """1 + 2 / sqrt(2 * numel): two standard errors of a relative Frobenius error over
    `numel` elements (tolerance's docstring); 1 without `numel`."""
    return 1.0 + 2.0 / (2.0 * numel) ** 0.5 if numel else 1.0


def tolerance_for(
    variant, dtype: str | torch.dtype, grad: bool = False, numel: int | None = None
) -> float:
    """The bar of a candidate kernel's output: tolerance(dtype, grad, numel), except for
    the forward output of a variant that quantises the activations to FP8
    (`variant.quantises_activations`: FP8_ACTIVATIONS_BAR, with the same allowance for
    small tensors). `variant` is a registry entry (mhfgen.registry.Variant) or None (a
    kernel of the 16-bit bars: the dispatched op in a dtype without such a variant)."""
    if grad or not getattr(variant, "quantises_activations", False):
        return tolerance(dtype, grad=grad, numel=numel)
    return FP8_ACTIVATIONS_BAR * small_tensor_allowance(numel)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref||_F / ||ref||_F in float64 (0 when both are empty or ref is all zero and
    x equals it). NaN or inf anywhere in x gives inf."""
    x64, ref64 = x.detach().double(), ref.detach().double()
    if not torch.isfinite(x64).all():
        return float("inf")
    denom = ref64.norm().item()
    num = (x64 - ref64).norm().item()
    if denom == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / denom


def row_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """The worst row's relative error, rows along the last dimension:
    max_r ||x_r - ref_r|| / max(||ref_r||, rms_r ||ref_r||), in float64. The floor (the
    root-mean-square row norm) keeps a row whose reference is near zero from dividing by
    almost nothing. NaN or inf anywhere in x gives inf; 0 for empty tensors."""
    x64, ref64 = x.detach().double(), ref.detach().double()
    if x64.numel() == 0:
        return 0.0
    if not torch.isfinite(x64).all():
        return float("inf")
    width = ref64.shape[-1] if ref64.dim() else 1
    x2, ref2 = x64.reshape(-1, width), ref64.reshape(-1, width)
    norms = ref2.norm(dim=1)
    floor = norms.square().mean().sqrt()
    if floor.item() == 0.0:
        return 0.0 if torch.equal(x2, ref2) else float("inf")
    return ((x2 - ref2).norm(dim=1) / norms.clamp(min=floor.item())).max().item()
