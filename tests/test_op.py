"""mhfgen.flash_mhf: the custom op, its autograd and torch.compile tracing."""
import torch

import mhfgen
from mhfgen.verification import Case, make_inputs, reference_outputs
from mhfgen.tolerances import relative_error

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
    torch.library.opcheck(torch.ops.mhfgen.flash_mhf.default, (q, k, u, v, r),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
