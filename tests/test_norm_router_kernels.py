"""mhfgen.kernels.norm_router (fused RMSNorm + router kernels) through Triton's interpreter,
against mhfgen.norm_router's PyTorch path in float64, behind the custom ops."""

import pytest
import torch

import mhfgen
from mhfgen.kernels import norm_router as kernels
from mhfgen.norm_router import norm_router

# (B, L, H, D, E, norm): odd D (96, 40), E of 1, 11, 22, T = B * L of 1, 37 and other
# values that are not multiples of the interpreter's BLOCK_T (16)
CASES = [
    (2, 19, 2, 96, 11, True),
    (1, 37, 1, 40, 22, True),
    (1, 1, 3, 40, 1, True),
    (3, 7, 2, 16, 11, False),
    (1, 37, 1, 40, 1, False),
]
IDS = ["D96-E11-T38", "D40-E22-T37", "T1-E1", "nonorm-D16-E11-T21", "nonorm-D40-E1-T37"]


def _inputs(B, L, H, D, E, norm, dtype, seed=0, weight_dtype=None):
    """q in `dtype`, the weights in `weight_dtype` (default: `dtype`)."""
    g = torch.Generator().manual_seed(seed)
    weight_dtype = weight_dtype or dtype
    q = torch.randn(B, L, H, D, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(H, D, generator=g)).to(weight_dtype) if norm else None
    wr = (torch.randn(H, D, E, generator=g) / D**0.5).to(weight_dtype)
    return q, w, wr


def _cotangents(qn, r, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(qn.shape, generator=g).to(qn.dtype), torch.randn(r.shape, generator=g)


def _run(q, w, wr, dqn, dr, use_kernels, dtype=None):
    """Values and gradients of norm_router; inputs cast to `dtype` first (if given)."""
    leaves = [
        t.detach().to(dtype or t.dtype).requires_grad_() if t is not None else None
        for t in (q, w, wr)
    ]
    qn, r = norm_router(*leaves, use_kernels=use_kernels)
    params = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((qn, r), params, (dqn.to(qn.dtype), dr.to(r.dtype)))
    return qn, r, grads


def _close(got, want, rtol, name):
    """|got - want| <= rtol * (|want| + max|want|): relative, with an absolute floor at the
    tensor's scale (entries near zero)."""
    got, want = got.double(), want.double()
    scale = want.abs().max().item() if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_values_and_gradients_match_the_pytorch_path_in_float64(case, dtype):
    """q in `dtype`, weights in fp32 (as under autocast). fp16: qn and dq are stored in
    fp16 (2e-3); dnorm_weight is fp32 math on unrounded n (1e-4); R and dW_R depend on qn
    rounded to fp16 before the router, which the float64 path does not do (measured
    ~2.6e-4 of the tensor's scale: 1e-3 here; test_fp16_matches_the_pytorch_path_in_fp16
    checks them at fp32 accuracy against a path with the same rounding)."""
    q, w, wr = _inputs(*case, dtype, weight_dtype=torch.float32)
    dqn, dr = _cotangents(q, torch.empty(*q.shape[:3], wr.shape[-1]))
    qn, r, grads = _run(q, w, wr, dqn, dr, use_kernels=True)
    assert qn.dtype == dtype and r.dtype == torch.float32
    assert [g.dtype for g in grads] == [dtype] + [torch.float32] * (len(grads) - 1)
    rqn, rr, rgrads = _run(q, w, wr, dqn, dr, use_kernels=False, dtype=torch.float64)
    fp32 = dtype == torch.float32
    _close(qn, rqn, 1e-5 if fp32 else 2e-3, "qn")
    _close(r, rr, 1e-5 if fp32 else 1e-3, "r")
    names = ["dq", "dnorm_weight", "dw_router"] if case[-1] else ["dq", "dw_router"]
    for name, g, rg in zip(names, grads, rgrads):
        rtol = 1e-5 if fp32 else {"dq": 2e-3, "dnorm_weight": 1e-4, "dw_router": 1e-3}[name]
        _close(g, rg, rtol, name)


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no-norm"])
def test_fp16_matches_the_pytorch_path_in_fp16_tightly(norm):
    """Same rounding of qn to fp16 before the router, fp32 math: R and the weight gradients
    agree to fp32 accuracy (fp32 weights); qn and dq up to one fp16 rounding."""
    q, w, wr = _inputs(2, 11, 2, 40, 11, norm, torch.float16, weight_dtype=torch.float32)
    dqn, dr = _cotangents(q, torch.empty(2, 11, 2, 11))
    qn, r, grads = _run(q, w, wr, dqn, dr, use_kernels=True)
    rqn, rr, rgrads = _run(q, w, wr, dqn, dr, use_kernels=False)
    _close(qn, rqn, 1e-3, "qn")
    _close(r, rr, 1e-5, "r")
    _close(grads[0], rgrads[0], 1e-3, "dq")
    for g, rg in zip(grads[1:], rgrads[1:]):
        _close(g, rg, 1e-5, "weight gradient")


def test_fp16_weights_get_fp16_gradients():
    q, w, wr = _inputs(1, 5, 2, 16, 3, True, torch.float16)
    dqn, dr = _cotangents(q, torch.empty(1, 5, 2, 3))
    qn, r, grads = _run(q, w, wr, dqn, dr, use_kernels=True)
    assert (qn.dtype, r.dtype) == (torch.float16, torch.float32)
    assert [g.dtype for g in grads] == [torch.float16] * 3
    _, _, rgrads = _run(q, w, wr, dqn, dr, use_kernels=False)
    for g, rg in zip(grads, rgrads):
        _close(g, rg, 2e-3, "gradient")


def test_strided_inputs_and_gradients():
    """q a (L, B)-transposed view with a padded head dimension; dqn and dr not contiguous."""
    B, L, H, D, E = 2, 9, 2, 40, 11
    g = torch.Generator().manual_seed(3)
    q = torch.randn(L, B, H, D + 8, generator=g)[..., :D].transpose(0, 1)
    w = 1 + 0.1 * torch.randn(H, D, generator=g)
    wr = torch.randn(H, D, E, generator=g) / D**0.5
    dqn = torch.randn(B, L, H, 2 * D, generator=g)[..., ::2]  # last stride 2
    dr = torch.randn(E, B, L, H, generator=g).permute(1, 2, 3, 0)
    assert not q.is_contiguous() and not dqn.is_contiguous() and not dr.is_contiguous()
    qn, r, grads = _run(q, w, wr, dqn, dr, use_kernels=True)
    rqn, rr, rgrads = _run(q, w, wr, dqn, dr, use_kernels=False, dtype=torch.float64)
    _close(qn, rqn, 1e-5, "qn")
    _close(r, rr, 1e-5, "r")
    for g, rg in zip(grads, rgrads):
        _close(g, rg, 1e-5, "gradient")


def test_launcher_none_gradients_equal_zero_gradients():
    q, w, wr = _inputs(1, 21, 2, 40, 11, True, torch.float32)
    dqn, dr = _cotangents(q, torch.empty(1, 21, 2, 11))
    for a, b in ((None, dr), (dqn, None), (None, None)):
        got = kernels.norm_router_bwd(q, w, wr, a, b)
        want = kernels.norm_router_bwd(
            q,
            w,
            wr,
            torch.zeros_like(dqn) if a is None else a,
            torch.zeros_like(dr) if b is None else b,
        )
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_only_the_router_output_used():
    q, w, wr = _inputs(1, 18, 2, 40, 11, True, torch.float32)
    leaves = [t.requires_grad_() for t in (q, w, wr)]
    _, r = norm_router(*leaves, use_kernels=True)
    mine = torch.autograd.grad(r.pow(2).sum(), leaves)
    ref = [t.detach().double().requires_grad_() for t in leaves]
    _, rr = norm_router(*ref, use_kernels=False)
    theirs = torch.autograd.grad(rr.pow(2).sum(), ref)
    for a, b in zip(mine, theirs):
        _close(a, b, 1e-5, "gradient")


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no-norm"])
def test_no_tokens(norm, monkeypatch):
    q, w, wr = _inputs(2, 0, 2, 40, 11, norm, torch.float32)
    for name in ("norm_router_fwd_kernel", "norm_router_bwd_kernel"):
        monkeypatch.setattr(kernels, name, None)  # no launch
    leaves = [t.requires_grad_() if t is not None else None for t in (q, w, wr)]
    qn, r = norm_router(*leaves, use_kernels=True)
    assert qn.shape == (2, 0, 2, 40) and r.shape == (2, 0, 2, 11)
    params = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(qn.sum() + r.sum(), params, allow_unused=True)
    for p, gp in zip(params, grads):
        assert gp is not None and gp.shape == p.shape and not gp.any()


def test_which_path_runs(monkeypatch):
    calls = []
    fwd = kernels.norm_router_fwd
    monkeypatch.setattr(kernels, "norm_router_fwd", lambda *a, **k: calls.append(1) or fwd(*a, **k))
    q, w, wr = _inputs(1, 3, 2, 16, 4, True, torch.float32)
    norm_router(q, w, wr)  # CPU tensors: PyTorch by default
    norm_router(q, w, wr, use_kernels=False)
    norm_router(q.double(), w.double(), wr.double(), use_kernels=True)  # float64: PyTorch
    assert calls == []
    norm_router(q, w, wr, use_kernels=True)
    assert calls == [1]


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no-norm"])
def test_custom_ops_pass_opcheck(norm):
    q, w, wr = _inputs(1, 5, 2, 16, 3, norm, torch.float32)
    q.requires_grad_()
    wr.requires_grad_()
    if w is not None:
        w.requires_grad_()
    torch.library.opcheck(torch.ops.mhfgen.norm_router.default, (q, w, wr))
    dqn, dr = _cotangents(q, torch.empty(1, 5, 2, 3))
    torch.library.opcheck(
        torch.ops.mhfgen.norm_router_backward.default,
        (q.detach(), w.detach() if w is not None else None, wr.detach(), dqn, dr),
    )


def test_torch_compile_fullgraph_traces_the_custom_ops():
    q, w, wr = _inputs(2, 5, 2, 40, 11, True, torch.float32)

    def f(q, w, wr):
        qn, r = norm_router(q, w, wr, use_kernels=True)
        return qn.pow(2).sum() + (r * torch.arange(11.0)).sum()

    leaves = [t.requires_grad_() for t in (q, w, wr)]
    eager = f(*leaves)
    want = torch.autograd.grad(eager, leaves)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves)
    got = torch.autograd.grad(compiled, leaves)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("qk_norm", [True, False], ids=["norm", "no-norm"])
def test_layer_triton_backend_on_cpu_matches_torch_backend(qk_norm, monkeypatch):
    calls = []
    fwd = kernels.norm_router_fwd
    monkeypatch.setattr(kernels, "norm_router_fwd", lambda *a, **k: calls.append(1) or fwd(*a, **k))
    torch.manual_seed(0)
    args = dict(
        d_model=64, n_heads=2, intermediate_size=64, n_experts=2, n_kv_heads=1, qk_norm=qk_norm
    )
    a = mhfgen.FlashMHF(backend="torch", **args)
    b = mhfgen.FlashMHF(backend="triton", **args)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = a(xa)
    assert calls == []  # backend="torch" never runs the kernels
    yb = b(xb)
    assert calls == [1]
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-6)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_launch_defaults_follow_the_h200_sweep():
    """GPU defaults (measured: the table in mhfgen/kernels/norm_router.py): TF32 dots for
    bf16/fp16, 3xTF32 for fp32; the forward in 64-token steps with 4 warps, the backward
    in 32- (TF32) or 16-token steps, 8 warps for fp32 beyond 4096-element tiles."""
    from mhfgen.kernels import norm_router as nr

    for dtype in (torch.bfloat16, torch.float16):
        for d_pad, e_pad in ((128, 32), (128, 64), (256, 32)):
            assert nr.forward_launch(dtype, d_pad, e_pad) == dict(
                block_t=64, num_warps=4, precision="tf32"
            )
    assert nr.forward_launch(torch.float32, 128, 32)["precision"] == "tf32x3"
    assert nr.forward_launch(torch.bfloat16, 256, 64)["block_t"] == 32  # unmeasured tiles
    assert nr.backward_launch(torch.bfloat16, 128, 32) == dict(
        block_t=32, num_warps=4, precision="tf32"
    )
    assert nr.backward_launch(torch.bfloat16, 128, 64) == dict(
        block_t=16, num_warps=4, precision="tf32"
    )
    assert nr.backward_launch(torch.float32, 128, 32) == dict(
        block_t=16, num_warps=4, precision="tf32x3"
    )
    assert nr.backward_launch(torch.float32, 256, 32) == dict(
        block_t=16, num_warps=8, precision="tf32x3"
    )
    for launch in (nr.forward_launch, nr.backward_launch):  # the interpreter: IEEE
        assert launch(torch.float16, 128, 32, interpreter=True)["precision"] == "ieee"


def test_the_forward_signals_dependents_on_sm90_only(monkeypatch):
    """On sm90+ the forward signals griddepcontrol.launch_dependents (a next kernel launched
    with programmatic dependent launch, the FP8 decode forward's pdl, may start its
    prologue while the router runs); the interpreter and sm80 leave it out. The sm90
    compile holds the instruction."""
    from triton import knobs

    from mhfgen import device

    # CPU tensors where the interpreter runs (CI), the GPU's where it is off
    on = "cpu" if knobs.runtime.interpret or not torch.cuda.is_available() else "cuda"
    q = torch.randn(1, 3, 2, 16, device=on)
    w_router = torch.randn(2, 16, 4, device=on)
    if on == "cpu":
        plan = kernels._fwd_plan(q, None, w_router)
        assert plan.launch.meta["LAUNCH_DEPENDENTS"] is False
    for target, signals in (("sm80", False), ("sm90", True), ("sm100", True)):
        monkeypatch.setattr(device, "target", lambda _, t=target: t)
        assert kernels._launches_dependents(q.device) is signals
    monkeypatch.setattr(device, "target", lambda _: "sm90")
    meta = kernels._fwd_plan(q, None, w_router).launch.meta
    assert meta["LAUNCH_DEPENDENTS"] is True
    ptx = _sm90_ptx(kernels.norm_router_fwd_kernel, meta)
    assert ptx.count("griddepcontrol.launch_dependents") == 1
    assert "griddepcontrol.launch_dependents" not in _sm90_ptx(
        kernels.norm_router_fwd_kernel, {**meta, "LAUNCH_DEPENDENTS": False}
    )


def _sm90_ptx(kernel, meta: dict) -> str:
    """The sm90 PTX of a Triton-language kernel with constexprs `meta` (num_warps taken
    out as the launch option), compiled in a subprocess with TRITON_INTERPRET=0."""
    import json
    import os
    import subprocess
    import sys

    code = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mhfgen.kernels import norm_router as k
meta = json.loads(sys.argv[1])
warps = meta.pop("num_warps")
fn = k.norm_router_fwd_kernel
pointers = ("Q", "NW", "WR", "QN", "R")
sig = {n: "constexpr" if n in meta else "*fp32" if n in pointers else "i32" for n in fn.arg_names}
sig["eps"] = "fp32"
src = ASTSource(fn=fn, signature=sig, constexprs=meta)
print(triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["ptx"])
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(meta)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
