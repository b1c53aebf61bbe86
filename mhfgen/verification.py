"""Proving the kernels against the float64 reference: inputs, reference gradients and the
per-output errors that tests and `mhfgen verify` both use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kernels, reference, registry
from .tolerances import relative_error, tolerance_for
from .validation import Problem

OUTPUTS = ("o", "dq", "dk", "du", "dv", "dr")


@dataclass(frozen=True, init=False)
class Case(Problem):
    """A Problem with the name the verify table reports it by, given first:
    Case(name, batch, seqlen, heads, kv_heads, head_dim, experts, expert_dim)."""

    name: str = ""

    def __init__(self, name: str, *sizes: int, **named_sizes: int) -> None:
        super().__init__(*sizes, **named_sizes)
        object.__setattr__(self, "name", name)


def make_inputs(
    case: Case,
    dtype: torch.dtype,
    device,
    seed: int = 0,
    r_dtype=torch.float32,
    q_layout: str = "view",
):
    """Random inputs of realistic scale (unit-variance q, weights ~ D^-1/2, normalised
    sigmoid routing). q_layout 'view': q is a view of a (B, L, H*D) projection output;
    'strided': q is a slice of a wider (B, L, H, D + 8) buffer (non-trivial head stride)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, L, H, D = case.batch, case.seqlen, case.heads, case.head_dim
    if q_layout == "view":
        q = torch.randn(B, L, H * D, generator=g).view(B, L, H, D)
    elif q_layout == "strided":
        q = torch.randn(B, L, H, D + 8, generator=g)[..., :D]
    else:
        raise ValueError(f"q_layout must be 'view' or 'strided', got {q_layout!r}")
    shape = (case.kv_heads, case.experts, case.expert_dim, D)
    k, u, v = (torch.randn(shape, generator=g) * D**-0.5 for _ in range(3))
    gates = torch.sigmoid(torch.randn(B, L, H, case.experts, generator=g))
    r = gates / gates.sum(-1, keepdim=True)
    do = torch.randn(B, L, H, D, generator=g)
    q = q.to(device=device, dtype=dtype)
    k, u, v, do = (t.to(device=device, dtype=dtype) for t in (k, u, v, do))
    return q, k, u, v, r.to(device=device, dtype=r_dtype), do


def fp8_inputs(q, k, u, v, r, do) -> tuple[tuple, tuple]:
    """The FP8-weight form of make_inputs' tensors: ((q, k8, u8, v8, r, scales), the
    arguments of mhfgen.flash_mhf_fp8; (q, k, u, v, r, do) with k, u, v dequantised in
    float32, the inputs whose float64 reference (reference_outputs) the FP8 kernels are
    checked against). The weights are quantised from their values (mhfgen.fp8)."""
    from .fp8 import dequantize_experts, quantize_experts

    k8, u8, v8, scales = quantize_experts(k, u, v)
    dense = dequantize_experts(k8, u8, v8, scales, torch.float32)
    return (q, k8, u8, v8, r, scales), (q, *dense, r, do)


def reference_outputs(q, k, u, v, r, do, token_chunk: int = 4096) -> dict[str, torch.Tensor]:
    """o and the five gradients in float64, by autograd through reference.flash_mhf over
    chunks of tokens (bounding the memory of the naive form at large sizes)."""
    B, L, H, D = q.shape
    q64, r64, do64 = (t.double().reshape(B * L, 1, *t.shape[2:]) for t in (q, r, do))
    w64 = [w.double().requires_grad_() for w in (k, u, v)]
    o, dq, dr = torch.empty_like(q64), torch.empty_like(q64), torch.empty_like(r64)
    for lo in range(0, B * L, token_chunk):
        qc = q64[lo : lo + token_chunk].detach().requires_grad_()
        rc = r64[lo : lo + token_chunk].detach().requires_grad_()
        oc = reference.flash_mhf(qc, *w64, rc)
        oc.backward(do64[lo : lo + token_chunk])
        o[lo : lo + token_chunk], dq[lo : lo + token_chunk] = oc.detach(), qc.grad
        dr[lo : lo + token_chunk] = rc.grad
    if B * L == 0:
        grads = [torch.zeros_like(w) for w in w64]
    else:
        grads = [w.grad for w in w64]
    return {
        "o": o.view(B, L, H, D),
        "dq": dq.view(B, L, H, D),
        "dk": grads[0],
        "du": grads[1],
        "dv": grads[2],
        "dr": dr.view(r.shape),
    }


def _run(op: str, config, *tensors):
    """`op` through the dispatcher (config None: it picks the variant too), else through
    the variant `config` belongs to."""
    if config is None:
        return kernels.run_op(op, *tensors)
    stem = getattr(config, "variant", None)
    for variant in registry.variants_for(op):
        if variant.stem == stem:
            return variant.launch(*tensors, config=config)
    raise ValueError(f"a {stem or type(config).__name__} config does not run op {op}")


#: the backward forms kernel_outputs takes: the dispatcher's choice (what autograd runs),
#: the one pass, or the split pair
BACKWARD_FORMS = ("dispatched", "fused", "split")


def kernel_outputs(
    q, k, u, v, r, do, fwd=None, dq=None, dkv=None, bwd=None, backward: str = "dispatched"
) -> dict[str, torch.Tensor]:
    """o and the five gradients through the generated kernels: each op through the
    dispatcher's variant and config, or with the given config (of a variant of that op)
    through its variant. The gradients come from `backward`: the
    form the dispatcher picks ('dispatched', as autograd runs it), the one-pass op 'bwd'
    ('fused', config `bwd`) or 'bwd_dq' then 'bwd_dkv' ('split', configs `dq`, `dkv`)."""
    if backward not in BACKWARD_FORMS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARD_FORMS)}, got {backward!r}")
    if backward == "dispatched" and (dq is not None or dkv is not None):
        backward = "split"
    if backward == "dispatched" and bwd is not None:
        backward = "fused"
    o = _run("fwd", fwd, q, k, u, v, r)
    if backward == "dispatched":
        dq_, dr, dk, du, dv = kernels.backward(q, k, u, v, r, do)
    elif backward == "fused":
        dq_, dr, dk, du, dv = _run("bwd", bwd, q, k, u, v, r, do)
    else:
        dq_, dr = _run("bwd_dq", dq, q, k, u, v, r, do)
        dk, du, dv = _run("bwd_dkv", dkv, q, k, u, v, r, do)
    return {"o": o, "dq": dq_, "dk": dk, "du": du, "dv": dv, "dr": dr}


@dataclass(frozen=True)
class Check:
    """The error of one output against its tolerance."""

    output: str
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance


def compare(
    got: dict,
    expected: dict,
    dtype: torch.dtype | str,
    outputs: tuple[str, ...] = OUTPUTS,
    variant=None,
) -> list[Check]:
    """Relative Frobenius error of each of `outputs`, with its dtype's tolerance (a torch
    dtype or a spec dtype name) for a tensor of its size, as the kernel `variant` (a
    registry entry that computed the outputs; None: one of the dtype's own bars) is held
    to (mhfgen.tolerances.tolerance_for)."""
    return [
        Check(
            name,
            relative_error(got[name], expected[name]),
            tolerance_for(variant, dtype, grad=name != "o", numel=expected[name].numel()),
        )
        for name in outputs
    ]
