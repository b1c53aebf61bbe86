"""The forward on FP8 weights (mhfgen.flash_mhf_fp8, flash_mhf_fwd with an FP8-weight
spec): float64 reference on the dequantised weights, odd shapes and every template branch,
through Triton's interpreter in fp16; the input checks; the refusal before sm89; the
layer's choice between the FP8 kernels and dequantised weights."""

from __future__ import annotations

import json

import pytest
import torch
from cases import CASES, Fwd
from kernel_harness import assert_close

import mhfgen
from mhfgen import ops, registry
from mhfgen.spec import KernelSpec
from mhfgen.validation import check_weight_scales
from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
from mhfgen.verification import fp8_inputs, make_inputs, reference_outputs

#: configs that reach the forward template's branches with FP8 weights: the flat loop,
#: the per-expert loop (BLOCK_N not dividing De), prefetched scores, intermediate splits,
#: grouped heads, descriptors (TMA) and padded head_dim
FP8_CONFIGS = {
    "default": None,
    "flat_bn16": Fwd(block_m=16, block_n=16),
    "expert_loop_bn64": Fwd(block_m=32, block_n=64),
    "prefetch": Fwd(block_m=16, block_n=16, prefetch_scores=True),
    "splits": Fwd(block_m=16, block_n=16, inter_splits=2),
    "tma": Fwd(block_m=16, block_n=16, tma=True),
    "pad": Fwd(block_m=16, block_n=32, head_dim_split="pad"),
}


def _case_inputs(case, seed=0):
    dense = make_inputs(case, torch.float16, "cpu", seed=seed)
    fp8, dequantised = fp8_inputs(*dense)
    return fp8, reference_outputs(*dequantised)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fp8_forward_matches_float64_on_the_dequantised_weights(case):
    fp8, ref = _case_inputs(case)
    with torch.no_grad():
        o = mhfgen.flash_mhf_fp8(*fp8)
    assert o.dtype == torch.float16 and o.shape == fp8[0].shape
    assert_close("o", o, ref["o"], "float16_e4m3", case)


@pytest.mark.parametrize("name", [n for n in FP8_CONFIGS if n != "default"])
@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=lambda c: c.name)
def test_every_template_branch_reads_fp8_weights(case, name):
    config = FP8_CONFIGS[name]
    if config.group_heads == 1 and case.heads != case.kv_heads:
        config = Fwd(**{**config.as_dict(), "group_heads": case.heads // case.kv_heads})
    fp8, ref = _case_inputs(case, seed=1)
    o = flash_mhf_fwd(*fp8, config=config)
    assert_close("o", o, ref["o"], "float16_e4m3", case)


def test_the_kernel_reads_the_scales_of_every_weight():
    """Doubling K's, U's or V's scales changes the output as doubling that weight does:
    each scale tensor reaches its own GEMM."""
    case = CASES[0]
    (q, k8, u8, v8, r, scales), _ = _case_inputs(case)
    base = flash_mhf_fwd(q, k8, u8, v8, r, scales).double()
    for i in range(3):
        doubled = scales.clone()
        doubled[i] *= 2
        got = flash_mhf_fwd(q, k8, u8, v8, r, doubled).double()
        dense = [w.float() * s.unsqueeze(-1) for w, s in zip((k8, u8, v8), doubled)]
        want = mhfgen.reference.flash_mhf(q.double(), *(w.double() for w in dense), r.double())
        assert (got - base).abs().max() > 1e-3
        assert mhfgen.tolerances.relative_error(got, want) < 2e-3


def test_fp8_spec_names_and_dispatch():
    spec = KernelSpec(4, 2, 64, 2, 64, "bfloat16_e4m3", "sm90")
    assert spec.fp8_weights and spec.activation_dtype == "bfloat16"
    assert spec.torch_dtype == torch.bfloat16 and spec.weight_torch_dtype == torch.float8_e4m3fn
    # the W8A8 Gluon forward first at every count (its split schedule at decode sizes)
    assert [v.stem for v in registry.usable("fwd", spec, 8)] == [
        "flash_mhf_fwd_fp8_ws",
        "flash_mhf_fwd",
    ]
    assert registry.usable("bwd_dq", spec) == []
    old = KernelSpec(4, 2, 64, 2, 64, "bfloat16_e4m3", "sm80")
    reason = registry.get("flash_mhf_fwd").unsupported(old)
    assert "sm89" in reason and "sm80" in reason
    with pytest.raises(ValueError, match="KernelSpec.dtype"):
        KernelSpec(4, 2, 64, 2, 64, "float32_e4m3", "sm90")


def test_fp8_inputs_are_checked_before_any_kernel():
    (q, k8, u8, v8, r, scales), _ = _case_inputs(CASES[0])
    with torch.no_grad():
        with pytest.raises(TypeError, match="need their per-row scales"):
            mhfgen.flash_mhf(q, k8, u8, v8, r)
        with pytest.raises(TypeError, match="scales go with float8_e4m3fn"):
            check_weight_scales(k8.half(), scales)
        with pytest.raises(ValueError, match=r"scales must have shape \(3, Hkv, E, De\)"):
            mhfgen.flash_mhf_fp8(q, k8, u8, v8, r, scales[:2])
        with pytest.raises(TypeError, match="scales must be float32"):
            mhfgen.flash_mhf_fp8(q, k8, u8, v8, r, scales.double())
        with pytest.raises(TypeError, match="FP8 weights take bfloat16 or float16 q"):
            mhfgen.flash_mhf_fp8(q.float(), k8, u8, v8, r, scales)
        with pytest.raises(TypeError, match="u must have k's dtype"):
            mhfgen.flash_mhf_fp8(q, k8, u8.half(), v8, r, scales)
        with pytest.raises(TypeError, match="scales must be a torch.Tensor"):
            flash_mhf_fwd(q, k8, u8, v8, r, Fwd())
    with pytest.raises(ValueError, match="computes no gradients"):
        mhfgen.flash_mhf_fp8(q.requires_grad_(), k8, u8, v8, r, scales)


def test_fp8_is_refused_on_a_gpu_before_sm89(monkeypatch):
    monkeypatch.setattr(ops, "target", lambda device: "sm80")
    with pytest.raises(RuntimeError, match=r"FP8 tensor cores \(sm89 or later\).*sm80"):
        ops.check_fp8_device(torch.device("cuda", 0))
    monkeypatch.setattr(ops, "target", lambda device: "sm89")
    ops.check_fp8_device(torch.device("cuda", 0))


def _fp8_layer_counting_fp8_calls(monkeypatch):
    """A small fp16 FlashMHF layer after quantize_fp8_, and the list that gets one entry
    per call of ops.flash_mhf_fp8 (which still runs)."""
    torch.manual_seed(0)
    layer = mhfgen.FlashMHF(64, 4, 96, 3, n_kv_heads=2, backend="triton", dtype=torch.float16)
    layer.quantize_fp8_()
    calls = []
    fp8_op = ops.flash_mhf_fp8
    monkeypatch.setattr(ops, "flash_mhf_fp8", lambda *a: calls.append(1) or fp8_op(*a))
    return layer, calls


def test_the_fp8_layer_runs_the_fp8_kernels_without_grad_and_dequantises_with_it(monkeypatch):
    layer, calls = _fp8_layer_counting_fp8_calls(monkeypatch)
    x = torch.randn(2, 37, 64, dtype=torch.float16)
    with torch.no_grad():
        served = layer(x)
    assert calls == [1]
    dequantised = layer(x.requires_grad_())  # autograd through x: the 16-bit kernels
    assert calls == [1]
    dequantised.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    err = mhfgen.tolerances.relative_error(served, dequantised.detach())
    assert err <= 2 * mhfgen.tolerances.tolerance("float16")


def test_verify_checks_the_fp8_forward_and_marks_gradients_na(tmp_path, capsys):
    from mhfgen.cli import main

    out = tmp_path / "verify.json"
    argv = ["verify", "--dtypes", "float16_e4m3", "--backward", "split", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "float16_e4m3" in text and "n/a" in text
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["ok"] and set(r["errors"]) == {"o"} for r in rows)
    assert main(["verify", "--dtypes", "bfloat16_e4m3"]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_the_tuner_times_and_checks_fp8_candidates_on_fp8_inputs():
    from mhfgen.tuning.problem import TuningProblem
    from mhfgen.tuning.workload import Workload

    spec = KernelSpec(2, 1, 32, 2, 32, "float16_e4m3", "interpreter")
    work = Workload(TuningProblem(spec, 8), "cpu")
    args = work.args("flash_mhf_fwd")
    assert len(args) == 6 and args[1].dtype == torch.float8_e4m3fn
    assert args[5].shape == (3, 1, 2, 32)
    error, reason = work.check("flash_mhf_fwd", Fwd(block_m=16, block_n=16))
    assert reason is None and error < 1e-3
    # a kernel that ignored the scales would be far off the dequantised reference
    assert work.reference("flash_mhf_fwd")[0].abs().max() > 0


def test_the_decode_suite_needs_a_gpu_and_counts_fp8_bytes(capsys):
    from mhfgen import bench_decode
    from mhfgen.cli import main

    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    dense, fp8 = (bench_decode.weight_bytes(spec, w) for w in ("dense", "fp8"))
    assert dense == 3 * 16 * 5632 * 128 * 2 and fp8 == 3 * 16 * 5632 * (128 + 4)
    if not torch.cuda.is_available():
        assert main(["bench", "--suite", "decode", "--preset", "1.3B"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--suite", "decode", "--weights", "int4"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_bench_runs_the_fp8_method_beside_mhfgen(capsys):
    from mhfgen.cli import main

    small = ["--heads", "2", "--head-dim", "32", "--intermediate", "64", "--experts", "2"]
    argv = ["bench", *small, "--tokens", "16", "--dtype", "float16", "--repeat", "1"]
    assert main([*argv, "--methods", "mhfgen,mhfgen_fp8", "--passes", "fwd"]) == 0
    table = capsys.readouterr().out
    assert "mhfgen_fp8" in table and "failed" not in table
    assert main([*argv[:-2], "--dtype", "float16_e4m3"]) == 2
    assert "mhfgen_fp8" in capsys.readouterr().err


def test_torch_compile_fullgraph_traces_the_fp8_op():
    (q, k8, u8, v8, r, scales), ref = _case_inputs(CASES[0])

    def f(q, k8, u8, v8, r, scales):
        return mhfgen.flash_mhf_fp8(q, k8, u8, v8, r, scales) * 2

    with torch.no_grad():
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k8, u8, v8, r, scales)
    assert_close("o", got / 2, ref["o"], "float16_e4m3", CASES[0])


def test_the_fp8_layer_dequantises_where_the_gluon_forward_would_run(monkeypatch):
    """At prefill sizes on Hopper the dispatcher's 16-bit forward is the Gluon one, faster
    than the FP8-weight forward: the layer dequantises there (ops.fp8_forward_pays)."""
    import dataclasses

    from mhfgen import dispatch

    layer, calls = _fp8_layer_counting_fp8_calls(monkeypatch)
    real = dispatch.explain_choice

    def gluon_choice(op, spec, tokens, device):
        choice = real(op, spec, tokens, device)
        return dataclasses.replace(choice, variant="flash_mhf_fwd_ws") if tokens > 16 else choice

    monkeypatch.setattr(dispatch, "explain_choice", gluon_choice)
    ops._fp8_pays.clear()
    with torch.no_grad():
        layer(torch.randn(1, 8, 64, dtype=torch.float16))  # decode-sized: FP8 kernels
        assert calls == [1]
        layer(torch.randn(2, 37, 64, dtype=torch.float16))  # "Gluon" sized: dequantised
        assert calls == [1]
    ops._fp8_pays.clear()


def test_the_bf16_form_folds_v_scales_into_the_activation_tile(monkeypatch):
    """bf16 activations take V's row scales into p (fp8_weights "p"); the interpreter
    cannot multiply bf16, so that generated form runs here in fp16, on weights whose
    p * scale stays inside fp16's normal range, against float64."""
    from mhfgen.variants import flash_mhf_fwd as fwd

    real = fwd.FlashMhfFwd.static_params

    def p_form(self, spec, config):
        params = real(self, spec, config)
        if spec.fp8_weights:
            params["fp8_weights"] = "p"
        return params

    monkeypatch.setattr(fwd.FlashMhfFwd, "static_params", p_form)
    case = CASES[4]  # De80: the per-expert loop with masked tiles
    q, k, u, v, r, do = make_inputs(case, torch.float16, "cpu", seed=3)
    fp8, dequantised = fp8_inputs(q, k * 8, u * 8, v * 8, r, do)
    ref = reference_outputs(*dequantised)
    source = mhfgen.codegen.render(
        "flash_mhf_fwd", KernelSpec(2, 1, 32, 3, 80, "float16_e4m3", "interpreter"), Fwd()
    )
    assert "* sv[None, :]).to(Q.dtype.element_ty)" in source
    for config in (Fwd(block_m=16, block_n=32), Fwd(block_m=16, block_n=16, prefetch_scores=True)):
        config = Fwd(**{**config.as_dict(), "group_heads": 2})
        assert_close("o", flash_mhf_fwd(*fp8, config=config), ref["o"], "float16_e4m3", case)
