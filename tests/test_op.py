"""mhfgen.flash_mhf: the custom op, its autograd and torch.compile tracing."""

import pytest
import torch

import mhfgen
from mhfgen.tolerances import relative_error
from mhfgen.verification import Case, make_inputs, reference_outputs

CASE = Case("op", batch=2, seqlen=5, heads=4, kv_heads=2, head_dim=32, experts=2, expert_dim=32)


def leaf_inputs(dtype=torch.float32):
    q, k, u, v, r, do = make_inputs(CASE, dtype, "cpu", seed=3)
    return [t.clone().requires_grad_() for t in (q, k, u, v, r)], do


def test_autograd_gives_all_five_gradients():
    (q, k, u, v, r), do = leaf_inputs()
    o = mhfgen.flash_mhf(q, k, u, v, r)
    o.backward(do)
    ref = reference_outputs(q.detach(), k.detach(), u.detach(), v.detach(), r.detach(), do)
    assert relative_error(o, ref["o"]) < 1e-5
    for name, t in (("dq", q), ("dk", k), ("du", u), ("dv", v), ("dr", r)):
        assert relative_error(t.grad, ref[name]) < 1e-5, name


def test_torch_compile_fullgraph_traces_the_op():
    (q, k, u, v, r), do = leaf_inputs()

    def f(q, k, u, v, r):
        return (mhfgen.flash_mhf(q, k, u, v, r) * 2.0).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, u, v, r)
    loss.backward()
    eager = [t.detach().clone().requires_grad_() for t in (q, k, u, v, r)]
    want = f(*eager)
    want.backward()
    torch.testing.assert_close(loss, want)
    for a, b in zip((q, k, u, v, r), eager):
        torch.testing.assert_close(a.grad, b.grad)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 3, 4, 32)
        k = torch.empty(2, 2, 16, 32)
        r = torch.empty(2, 3, 4, 2)
        o = torch.ops.mhfgen.flash_mhf(q, k, k, k, r)
        grads = torch.ops.mhfgen.flash_mhf_backward(q, k, k, k, r, o)
    assert o.shape == q.shape
    assert [tuple(g.shape) for g in grads] == [q.shape, k.shape, k.shape, k.shape, r.shape]


def test_opcheck():
    (q, k, u, v, r), _ = leaf_inputs()
    torch.library.opcheck(
        torch.ops.mhfgen.flash_mhf.default,
        (q, k, u, v, r),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


class _CountingOp:
    """Stands in for a custom op: counts its calls, then calls it."""

    def __init__(self, op) -> None:
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


def _count_op(monkeypatch, module, name):
    counter = _CountingOp(getattr(module, name))
    monkeypatch.setattr(module, name, counter)
    return counter


def test_no_grad_eager_call_skips_the_op_and_gives_the_same_output(monkeypatch):
    (q, k, u, v, r), _ = leaf_inputs()
    through_op = mhfgen.flash_mhf(q, k, u, v, r)  # leaves requiring grad: the op
    op = _count_op(monkeypatch, mhfgen.ops, "_flash_mhf_op")
    with torch.no_grad():
        direct = mhfgen.flash_mhf(q, k, u, v, r)
    assert op.calls == 0
    assert torch.equal(direct, through_op.detach()) and not direct.requires_grad
    detached = mhfgen.flash_mhf(*(t.detach() for t in (q, k, u, v, r)))  # grad on, none wanted
    assert op.calls == 0 and torch.equal(detached, direct)


def test_calls_that_need_the_op_go_through_it(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    (q, k, u, v, r), do = leaf_inputs()
    op = _count_op(monkeypatch, mhfgen.ops, "_flash_mhf_op")
    with torch.no_grad(), FlopCounterMode(display=False):  # a TorchDispatchMode
        mhfgen.flash_mhf(q, k, u, v, r)
    assert op.calls == 1
    with FlopCounterMode(display=False):  # autograd under a dispatch mode: the op as well
        mhfgen.flash_mhf(q, k, u, v, r).backward(do)
    assert op.calls == 2 and q.grad is not None
    torch.compile(mhfgen.flash_mhf, fullgraph=True, backend="eager")(  # traced
        *(t.detach() for t in (q, k, u, v, r))
    )
    assert op.calls == 3


def test_eager_autograd_runs_the_op_launchers_without_the_op(monkeypatch):
    """An eager call that wants gradients runs the op's launchers through an
    autograd.Function: the op is not called, and the output and every gradient are the
    op's, bit for bit."""
    (q, k, u, v, r), do = leaf_inputs()
    leaves = (q, k, u, v, r)
    mhfgen.ops._flash_mhf_op(*leaves).backward(do)
    want = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    op = _count_op(monkeypatch, mhfgen.ops, "_flash_mhf_op")
    out = mhfgen.flash_mhf(*leaves)
    out.backward(do)
    assert op.calls == 0 and out.requires_grad
    assert torch.equal(out.detach(), mhfgen.ops._flash_mhf_op(*leaves).detach())
    for t, g in zip(leaves, want):
        assert torch.equal(t.grad, g)


def test_no_grad_norm_router_skips_the_op(monkeypatch):
    from mhfgen import norm_router as nr

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 3, 32, generator=g)
    w = torch.randn(3, 32, generator=g).requires_grad_()
    wr = torch.randn(3, 32, 4, generator=g).requires_grad_()
    qn_op, r_op = nr.norm_router(q, w, wr, use_kernels=True)
    op = _count_op(monkeypatch, nr, "_norm_router_op")
    with torch.no_grad():
        qn, r = nr.norm_router(q, w, wr, use_kernels=True)
        q_same, r_plain = nr.norm_router(q, None, wr, use_kernels=True)
    assert op.calls == 0
    assert torch.equal(qn, qn_op.detach()) and torch.equal(r, r_op.detach())
    assert q_same is q and r_plain.shape == (2, 5, 3, 4)
    nr.norm_router(q, w, wr, use_kernels=True)  # weights require grad: eager autograd
    assert op.calls == 0
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):  # under a dispatch mode: the op
        nr.norm_router(q, w, wr, use_kernels=True)
    assert op.calls == 1


@pytest.mark.parametrize("with_norm", [True, False])
def test_eager_norm_router_autograd_matches_the_op(monkeypatch, with_norm):
    """norm_router's eager autograd gives the op's outputs and gradients, bit for bit,
    with and without the norm weight (then q itself comes back as qn)."""
    from mhfgen import norm_router as nr

    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 5, 3, 32, generator=g).requires_grad_()
    w = torch.randn(3, 32, generator=g).requires_grad_() if with_norm else None
    wr = torch.randn(3, 32, 4, generator=g).requires_grad_()
    dqn, dr = torch.randn(2, 5, 3, 32, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    leaves = [t for t in (q, w, wr) if t is not None]

    def grads(qn, r):
        torch.autograd.backward([qn, r], [dqn, dr])
        out = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return out

    qn_op, r_op = nr._norm_router_op(q, w, wr)
    want = grads(qn_op if with_norm else q * 1, r_op)
    op = _count_op(monkeypatch, nr, "_norm_router_op")
    qn, r = nr.norm_router(q, w, wr, use_kernels=True)
    assert op.calls == 0
    assert (qn is q) == (not with_norm)
    assert torch.equal(r.detach(), r_op.detach())
    for got, ref in zip(grads(qn if with_norm else q * 1, r), want):
        assert torch.equal(got, ref)


def test_eager_autograd_is_once_differentiable_as_the_op():
    """A second derivative through flash_mhf is an error on both paths (the op's backward
    has no derivative of its own), never silently zero."""
    (q, k, u, v, r), do = leaf_inputs()
    for fn in (mhfgen.flash_mhf, mhfgen.ops._flash_mhf_op):
        (gq,) = torch.autograd.grad(fn(q, k, u, v, r), q, do.requires_grad_(), create_graph=True)
        with pytest.raises(RuntimeError):
            gq.sum().backward()
