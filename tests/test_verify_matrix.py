"""The verification matrix (mhfgen.verify_matrix): every variant forced one at a time on
every documented input form, against the float64 reference, whole tensors and every row.

On the CPU the Triton-language variants run through the interpreter (fp32, fp16); the
GPU-marked tests run every variant, Gluon ones included, in all three dtypes, plus the
seeded property-based pass, the r-in-q's-dtype regression and inputs past 2^31 elements.
"""

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on where there is no GPU

# isort: split
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhfgen import registry
from mhfgen.kernels.configs import caller_error
from mhfgen.tolerances import ROW_FACTOR, relative_error, row_error, tolerance
from mhfgen.verification import Case, reference_outputs
from mhfgen.verify_matrix import (
    CPU_SHAPES,
    FORMS,
    GPU_SHAPES,
    InputForm,
    MatrixShape,
    check_variant,
    form_inputs,
    run_group,
    shapes_named,
)

GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
cpu_only = pytest.mark.skipif(GPU, reason="the CPU matrix (the GPU one runs there)")

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


# -- the checker itself ------------------------------------------------------------------
def test_one_wrong_row_among_many_fails_the_row_check_though_not_the_tensor_check():
    torch.manual_seed(0)
    ref = torch.randn(20000, 64, dtype=torch.float64)
    got = ref.clone()
    got[12345] *= 1.5  # one row off by half its size
    assert relative_error(got, ref) < tolerance("bfloat16", grad=True)
    assert row_error(got, ref) > ROW_FACTOR * tolerance("bfloat16", grad=True)


def test_row_error_floors_rows_near_zero_and_sees_non_finite_values():
    ref = torch.ones(100, 4, dtype=torch.float64)
    ref[3] = 1e-12  # a near-zero row: its error is measured against the typical row
    got = ref.clone()
    got[3] = 1e-6
    assert row_error(got, ref) < 1e-5
    got[7, 1] = float("nan")
    assert row_error(got, ref) == float("inf")
    assert row_error(torch.zeros(0, 4), torch.zeros(0, 4)) == 0.0


def test_input_forms_have_the_layouts_they_name():
    case = Case("c", 2, 5, 4, 2, 32, 2, 32)
    base = form_inputs(case, FORMS[0], torch.float16, "cpu")
    for form in FORMS:
        q, k, u, v, r, do = form_inputs(case, form, torch.float16, "cpu")
        assert r.dtype == (torch.float32 if form.r == "float32" else torch.float16)
        assert q.stride(-1) == 1 and do.stride() == q.stride()
        if form.q == "view":
            assert q.is_contiguous()
        elif form.q == "strided":
            assert q.stride(2) == 32 + 8
        else:
            assert q.stride(1) == 32 and q.stride(2) == 5 * 32  # (B, H, L, D) storage
        assert k.is_contiguous() == (form.weights == "contiguous")
        for a, b in zip((q, k, u, v, do), base[:4] + base[5:]):
            assert torch.equal(a, b)  # the same values, another layout


def test_unknown_matrix_shapes_are_named():
    with pytest.raises(ValueError, match="nope"):
        shapes_named("nope", gpu=False)
    assert shapes_named(None, gpu=True) == GPU_SHAPES


def test_a_variant_that_leaves_a_row_unwritten_fails_its_row():
    """A launcher whose output keeps one stale row: the matrix names the output."""
    case = Case("c", 1, 37, 2, 2, 32, 2, 32)
    inputs = form_inputs(case, FORMS[0], torch.float32, "cpu")
    expected = reference_outputs(*inputs)

    class Stale:
        takes_grad = False
        outputs = ("o",)

        def launch(self, *tensors):
            o = expected["o"].float().clone()
            o[0, 20, 1] = 0.0
            return o

    status, errors, _ = check_variant(Stale(), inputs, expected, torch.float32)
    assert status == "FAIL o" and errors["o"][1] > 0.5


# -- the CPU matrix ----------------------------------------------------------------------
@cpu_only
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cpu_matrix(shape, dtype):
    rows = run_group(shape, dtype)
    ran = [r for r in rows if r.status != "n/a"]
    assert {r.variant for r in ran} == {
        v.stem for v in registry.all_variants() if v.family == "triton"
    }
    failed = [(r.variant, r.batch, r.seqlen, r.form, r.status) for r in ran if not r.ok]
    assert not failed


def _forms():
    return st.builds(
        InputForm,
        name=st.just("drawn"),
        r=st.sampled_from(["float32", "q"]),
        q=st.sampled_from(["view", "strided", "transposed"]),
        weights=st.sampled_from(["contiguous", "strided"]),
    )


@cpu_only
@settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    batch=st.integers(1, 3),
    seqlen=st.integers(1, 20),
    group=st.sampled_from([1, 2, 3]),
    kv_heads=st.integers(1, 2),
    head_dim=st.sampled_from([16, 32, 48]),
    experts=st.integers(1, 3),
    expert_dim=st.sampled_from([16, 32, 48]),
    form=_forms(),
    dtype=st.sampled_from(["float32", "float16"]),
)
def test_property_cpu(batch, seqlen, group, kv_heads, head_dim, experts, expert_dim, form, dtype):
    shape = MatrixShape(
        "drawn", group * kv_heads, kv_heads, head_dim, experts, expert_dim, ((batch, seqlen),)
    )
    rows = run_group(shape, dtype, forms=(form,))
    failed = [(r.variant, r.status) for r in rows if not r.ok]
    assert not failed


# -- errors are the caller's -------------------------------------------------------------
def test_out_of_memory_and_sticky_cuda_errors_are_the_callers():
    assert caller_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert caller_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert caller_error(MemoryError())
    assert not caller_error(RuntimeError("out of resource: shared memory, Required: 999999"))
    assert not caller_error(ValueError("config cannot run"))


def test_an_out_of_memory_error_at_the_first_launch_is_raised_and_demotes_nothing(
    tmp_path, monkeypatch, caplog
):
    """An OOM at a stored config's first launch reaches the caller, no warning is
    logged, and the stored config is still the choice for the next call."""
    import importlib
    import logging

    from test_runtime_hardening import BAD, CASE, CPU, SPEC, _store, inputs

    from mhfgen import dispatch

    fwd_module = importlib.import_module("mhfgen.variants.flash_mhf_fwd")
    _store(tmp_path, monkeypatch)
    real = fwd_module.load_kernel
    oom = {"left": 1}

    def load(kernel, spec, config, *args):
        if config == BAD and oom["left"]:
            oom["left"] -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")
        return real(kernel, spec, config, *args)

    monkeypatch.setattr(fwd_module, "load_kernel", load)
    q, k, u, v, r, _ = inputs()
    with caplog.at_level(logging.WARNING, logger="mhfgen.dispatch"):
        with pytest.raises(torch.cuda.OutOfMemoryError):
            mhfgen.flash_mhf(q, k, u, v, r)
    assert not [rec for rec in caplog.records if "failed to compile" in rec.message]
    choice = dispatch.explain_choice("flash_mhf_fwd", SPEC, CASE.tokens, CPU)
    assert choice.config == BAD and choice.source != "heuristic"
    mhfgen.flash_mhf(q, k, u, v, r)  # the next call runs the stored config


# -- the GPU matrix ----------------------------------------------------------------------
@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_gpu_matrix(shape, dtype):
    rows = run_group(shape, dtype)
    failed = [(r.variant, r.batch, r.seqlen, r.form, r.status) for r in rows if not r.ok]
    assert not failed
    assert any(r.status == "ok" for r in rows)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("seqlen", [128, 2048])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_r_in_q_dtype_through_the_public_op(seqlen, dtype):
    """The 1.3B heads with r in q's dtype, through mhfgen.flash_mhf as a user calls it,
    with and without autograd (the dispatcher's variants)."""
    torch.manual_seed(0)
    dev = "cuda"
    k, u, v = (0.05 * torch.randn(16, 22, 256, 128, device=dev, dtype=dtype) for _ in range(3))
    q = torch.randn(1, seqlen, 16, 128, device=dev, dtype=dtype)
    r = torch.softmax(torch.randn(1, seqlen, 16, 22, device=dev), -1)
    do = torch.randn_like(q)
    for r_in in (r, r.to(dtype)):
        want = reference_outputs(q, k, u, v, r_in, do)
        o = mhfgen.flash_mhf(q, k, u, v, r_in)
        assert relative_error(o, want["o"]) < 2 * tolerance(dtype)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, u, v, r_in)]
        o = mhfgen.flash_mhf(*leaves)
        o.backward(do)
        assert relative_error(o, want["o"]) < 2 * tolerance(dtype)
        for name, leaf in zip(("dq", "dk", "du", "dv", "dr"), leaves):
            assert leaf.grad.dtype == leaf.dtype
            assert relative_error(leaf.grad, want[name]) < 2 * tolerance(dtype, grad=True), name


@gpu
@pytest.mark.gpu
@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    shape=st.sampled_from(GPU_SHAPES[:3]),
    batch=st.integers(1, 4),
    seqlen=st.integers(1, 300),
    form=_forms(),
    dtype=st.sampled_from(["bfloat16", "float16", "float32"]),
)
def test_property_gpu(shape, batch, seqlen, form, dtype):
    """Drawn token layouts and input forms on the matrix's specs (their kernels are
    compiled once), every variant."""
    drawn = MatrixShape(
        shape.name,
        shape.heads,
        shape.kv_heads,
        shape.head_dim,
        shape.experts,
        shape.expert_dim,
        ((batch, seqlen),),
    )
    rows = run_group(drawn, dtype, forms=(form,))
    failed = [(r.variant, r.status) for r in rows if not r.ok]
    assert not failed


@gpu
@pytest.mark.gpu
def test_inputs_past_2_to_the_31_elements():
    """q, o, dO and dq of more than 2^31 elements: o and dq of every variant that returns
    them, checked on the rows at both ends and where the element index passes 2^31."""
    if torch.cuda.get_device_properties(0).total_memory < 60 * 2**30:
        pytest.skip("needs 60 GiB of GPU memory")
    H, Hkv, D, E, De = 16, 2, 128, 2, 64
    edge = 2**31 // (H * D)
    T = edge + 4096
    torch.manual_seed(0)
    dev, dtype = "cuda", torch.bfloat16
    q = torch.randn(1, T, H, D, device=dev, dtype=dtype)
    do = torch.randn(1, T, H, D, device=dev, dtype=dtype)
    k, u, v = (torch.randn(Hkv, E, De, D, device=dev, dtype=dtype) * D**-0.5 for _ in range(3))
    r = torch.softmax(torch.randn(1, T, H, E, device=dev), -1)
    assert q.numel() > 2**31
    windows = [slice(0, 256), slice(edge - 256, edge + 256), slice(T - 256, T)]
    want = [reference_outputs(q[:, w], k, u, v, r[:, w], do[:, w]) for w in windows]
    for variant in registry.all_variants():
        names = [n for n in variant.outputs if n in ("o", "dq")]
        if not names:
            continue
        tensors = (q, k, u, v, r, do) if variant.takes_grad else (q, k, u, v, r)
        out = variant.launch(*tensors)
        out = dict(zip(variant.outputs, (out,) if isinstance(out, torch.Tensor) else out))
        for name in names:
            for w, ref in zip(windows, want):
                got = out[name][:, w]
                tol = tolerance(dtype, grad=name != "o")
                assert relative_error(got, ref[name]) < tol, (variant.stem, name, w)
                assert row_error(got, ref[name]) < ROW_FACTOR * tol, (variant.stem, name, w)
        del out
        torch.cuda.empty_cache()


def test_a_variant_named_directly_runs_token_counts_dispatch_leaves_to_another():
    """Calling a variant's launcher without a config asks the dispatcher for that
    variant's config: decode-sized or not, the variant named runs (the op's own choice
    still leaves small calls to flash_mhf_fwd)."""
    from mhfgen import dispatch
    from mhfgen.spec import KernelSpec

    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    cpu = torch.device("cpu")
    for tokens in (1, 2048):
        config = dispatch.choose_config("flash_mhf_fwd_ws", spec, tokens, cpu)
        assert config.variant == "flash_mhf_fwd_ws"
    assert dispatch.explain_choice("fwd", spec, 1, cpu).variant == "flash_mhf_fwd"


def test_tiny_outputs_get_the_sampling_allowance_and_large_ones_the_bar():
    assert tolerance("bfloat16", numel=384) == pytest.approx(2.5e-3 * (1 + 2 / 768**0.5))
    assert tolerance("bfloat16", numel=10**8) == pytest.approx(2.5e-3, rel=1e-3)


@cpu_only
def test_verify_shows_progress_per_row_on_stderr_also_in_a_log(capsys):
    """Kernels compile for minutes on a GPU: verify says which row it finished, also when
    stderr is a file, not only on a terminal."""
    from mhfgen.cli import main

    assert main(["verify", "--dtypes", "float32", "--backward", "fused"]) == 0
    err = capsys.readouterr().err
    assert "[1/5] small float32 fused" in err and "[5/5]" in err


@cpu_only
def test_cpu_matrix_takes_the_fp8_weight_dtypes():
    """An FP8-weight dtype in the matrix: the forward variants that take it run on each
    form's weights quantised, o against float64 on their dequantised values, to each
    variant's bar (the Gluon ones are n/a on the CPU); every other op is n/a."""
    shape = MatrixShape("fp8", 2, 2, 32, 2, 32, ((1, 37), (2, 65)))
    rows = run_group(shape, "float16_e4m3", forms=FORMS[:2])
    ran = [r for r in rows if r.status != "n/a"]
    assert {r.variant for r in ran} == {"flash_mhf_fwd"}
    assert all(r.ok and set(r.errors) == {"o"} for r in ran), [r.status for r in ran]
    assert all(r.tolerances["o"] < 2e-3 for r in ran)  # the weight-only bar (fp16's)
    assert len(ran) == 4  # two cases x two forms
