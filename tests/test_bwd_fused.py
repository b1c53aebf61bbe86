"""The one-pass backward (flash_mhf_bwd_fused): gradients against float64 autograd on the
shape table, its workspace budget, the choice between it and the split pair, the
deterministic mode, and its TMA form compiled for sm90 on the CPU."""

import dataclasses

import pytest
import torch
from cases import CASES, CONFIGS, DTYPES, EMPTY
from kernel_harness import assert_close, inputs_and_reference, run_poisoned

from mhfgen import dispatch, kernels, registry, workspace
from mhfgen.spec import KernelSpec
from mhfgen.tuning.lookup import Choice
from mhfgen.variants import flash_mhf_bwd_fused as fused
from mhfgen.variants.flash_mhf_bwd_fused import flash_mhf_bwd_fused

GRADS = ("dq", "dr", "dk", "du", "dv")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("config_index", range(len(CONFIGS["flash_mhf_bwd_fused"])))
def test_bwd_fused_matches_reference(case, dtype, config_index):
    config = CONFIGS["flash_mhf_bwd_fused"][config_index]
    (q, k, u, v, r, do), ref = inputs_and_reference(case, dtype)
    out = run_poisoned(flash_mhf_bwd_fused, q, k, u, v, r, do, config)
    for name, got in zip(GRADS, out):
        assert got.shape == ref[name].shape and got.is_contiguous()
        assert got.dtype == (r.dtype if name == "dr" else dtype)
        assert_close(name, got, ref[name], dtype, case)


def test_bwd_fused_strided_q_and_narrow_r():
    """A q with a head stride (a slice of a wider buffer) and r in q's dtype: dr goes
    through its fp32 workspace when an expert spans tiles."""
    case = CASES[2]  # L37_gqa
    (q, k, u, v, r, do), ref = inputs_and_reference(case, torch.float16)
    wide = torch.zeros(*q.shape[:3], q.shape[3] + 8, dtype=q.dtype)
    wide[..., : q.shape[3]] = q
    q = wide[..., : q.shape[3]]
    assert not q.is_contiguous()
    r16 = r.to(torch.float16)
    config = fused.Config(block_m=16, block_n=16, num_warps=4, num_stages=1, head_chunk=1)
    out = run_poisoned(flash_mhf_bwd_fused, q, k, u, v, r16, do, config)
    assert out[1].dtype == torch.float16
    for name, got in zip(GRADS, out):
        assert_close(name, got, ref[name], torch.float16, case)


def test_bwd_fused_empty_sequence_gives_zero_grads():
    (q, k, u, v, r, do), _ = inputs_and_reference(EMPTY, torch.float32)
    dq, dr, dk, du, dv = flash_mhf_bwd_fused(q, k, u, v, r, do)
    assert dq.shape == q.shape and dr.shape == r.shape
    for g in (dk, du, dv):
        assert g.shape == k.shape and not g.any()


# -- the workspace budget -------------------------------------------------------------
SPEC_13B = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")


def test_workspace_of_one_kv_head_at_the_13b_preset():
    one = fused.Config(block_m=128, block_n=64, num_warps=8, num_stages=2, head_chunk=1)
    assert workspace.workspace_bytes(SPEC_13B, one, 16384) == 16384 * 128 * 4  # 8 MiB
    split = dataclasses.replace(one, token_splits=3)
    assert workspace.workspace_bytes(SPEC_13B, split, 16384) == 16384 * 128 * 4 + 3 * 5632 * 128 * 4
    fp32 = KernelSpec(16, 16, 128, 22, 256, "float32", "sm90")
    assert workspace.workspace_bytes(fp32, split, 16384) == 0  # atomics into the outputs


def test_budget_prunes_wide_head_chunks_and_the_heuristic_fits():
    variant = fused.FlashMhfBwdFused()
    base = fused.Config(block_m=128, block_n=64, num_warps=8, num_stages=2)
    assert variant.prune_reason(SPEC_13B, base, 16384, 132) is None
    wide = dataclasses.replace(base, head_chunk=2)
    assert "exceeds the budget" in variant.prune_reason(SPEC_13B, wide, 16384, 132)
    assert variant.prune_reason(SPEC_13B, wide, 2048, 132) is None  # 2 MiB at 2048 tokens
    default = variant.default_config(SPEC_13B, 16384, 132)
    assert workspace.workspace_bytes(SPEC_13B, default, 16384) <= workspace.workspace_budget(
        SPEC_13B, 16384
    )
    assert default.head_chunk == 1


def test_tma_and_tanh_are_refused_where_they_cannot_run():
    interp = KernelSpec(2, 2, 32, 2, 32, "float32", "interpreter")
    with pytest.raises(ValueError, match="interpreter"):
        fused.Config(tma=True).check_for(interp)
    with pytest.raises(ValueError, match="interpreter"):
        fused.Config(sigmoid="tanh").check_for(interp)
    gqa3 = KernelSpec(3, 1, 64, 2, 64, "bfloat16", "sm90")
    with pytest.raises(ValueError, match="multiple"):
        fused.Config(block_m=64, tma=True).check_for(gqa3)
    with pytest.raises(ValueError, match="sigmoid"):
        fused.Config(sigmoid="erf")


# -- which backward runs ---------------------------------------------------------------
SMALL = CASES[0]


def _choices(monkeypatch, times: dict, tokens: dict):
    """stored_choice answering winners with the given times and tuned tokens (the
    heuristic's config and variant), None for the ops not named."""

    def fake(kernel, spec, n, device):
        if kernel not in times:
            return None
        choice = dispatch.explain_choice(kernel, spec, n, device)
        return Choice(choice.config, "exact", "user", tokens[kernel], choice.variant, times[kernel])

    monkeypatch.setattr(dispatch, "stored_choice", fake)
    dispatch.clear_cache()


def _form(dtype=torch.float32, deterministic=False):
    (q, *_), _ = inputs_and_reference(SMALL, dtype)
    spec = kernels.dispatched.spec_of(
        kernels.dispatched.check_flash_mhf_inputs(*inputs_and_reference(SMALL, dtype)[0][:5]), q
    )
    return dispatch.backward_form(spec, SMALL.tokens, q.device, deterministic)


def test_backward_form_is_the_split_pair_without_tuned_times():
    dispatch.clear_cache()
    assert _form() == dispatch.SPLIT
    assert _form(deterministic=True) == dispatch.SPLIT


def test_backward_form_follows_stored_times_of_one_token_count(monkeypatch):
    _choices(
        monkeypatch,
        {"bwd": 3.0, "bwd_dq": 1.0, "bwd_dkv": 1.5},
        {"bwd": 16, "bwd_dq": 16, "bwd_dkv": 16},
    )
    assert _form() == dispatch.SPLIT  # 2.5 ms < 3.0 ms
    _choices(
        monkeypatch,
        {"bwd": 2.0, "bwd_dq": 1.0, "bwd_dkv": 1.5},
        {"bwd": 16, "bwd_dq": 16, "bwd_dkv": 16},
    )
    assert _form() == dispatch.FUSED
    assert _form(deterministic=True) == dispatch.SPLIT
    # times of different token counts are not compared: the split pair stays
    _choices(
        monkeypatch,
        {"bwd": 2.0, "bwd_dq": 1.0, "bwd_dkv": 1.5},
        {"bwd": 16, "bwd_dq": 4096, "bwd_dkv": 16},
    )
    assert _form() == dispatch.SPLIT
    # no stored split pair: nothing to compare with, the split pair stays
    _choices(monkeypatch, {"bwd": 0.5}, {"bwd": 16})
    assert _form() == dispatch.SPLIT
    monkeypatch.undo()
    dispatch.clear_cache()


def test_backward_form_records_no_miss_of_the_one_pass(monkeypatch, tmp_path):
    """Choosing the form looks at stored winners only: with MHFGEN_RECORD set, a backward
    call records the split pair's ops (which it runs), never 'bwd'."""
    import json

    path = tmp_path / "shapes.jsonl"
    monkeypatch.setenv("MHFGEN_RECORD", str(path))
    dispatch.clear_cache()
    (q, k, u, v, r, do), _ = inputs_and_reference(SMALL, torch.float32)
    kernels.backward(q, k, u, v, r, do)
    monkeypatch.delenv("MHFGEN_RECORD")
    dispatch.clear_cache()
    recorded = {json.loads(line)["kernel"] for line in path.read_text().splitlines()}
    assert recorded == {"bwd_dq", "bwd_dkv"}


def test_deterministic_mode_runs_the_split_pair_without_token_splits(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the backward runs dq/dr, then
    dk/du/dv with token_splits=1 even where the dispatched config splits the tokens
    (atomics), and never the one pass; the gradients match the reference."""
    (q, k, u, v, r, do), ref = inputs_and_reference(SMALL, torch.float32)
    split_config = dispatch.explain_choice("bwd_dkv", *_spec_tokens(q, k, u, v, r)).config
    split_config = dataclasses.replace(split_config, token_splits=2)
    real = dispatch.explain_choice

    def fake(kernel, spec, n, device):
        choice = real(kernel, spec, n, device)
        if kernel == "bwd_dkv":
            return dataclasses.replace(choice, config=split_config)
        return choice

    seen = []
    launcher = registry.get("flash_mhf_bwd_dkv").launch_fn()

    def spy(*args, config=None):
        seen.append(config)
        return launcher(*args, config=config)

    def no_fused(*args, **kw):
        raise AssertionError("the one-pass backward ran in deterministic mode")

    monkeypatch.setattr(dispatch, "explain_choice", fake)
    monkeypatch.setattr("mhfgen.kernels.dispatched.explain_choice", fake)
    monkeypatch.setattr(dispatch.registry.get("flash_mhf_bwd_dkv"), "launch_fn", lambda: spy)
    monkeypatch.setattr(dispatch.registry.get("flash_mhf_bwd_fused"), "launch_fn", lambda: no_fused)
    dispatch.clear_cache()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        dq, dr, dk, du, dv = kernels.backward(q, k, u, v, r, do)
    finally:
        torch.use_deterministic_algorithms(previous)
        monkeypatch.undo()
        dispatch.clear_cache()
    assert seen and all(c.token_splits == 1 for c in seen)
    for name, got in zip(GRADS, (dq, dr, dk, du, dv)):
        assert_close(name, got, ref[name], torch.float32, SMALL)


def test_env_var_requests_deterministic_gradients(monkeypatch):
    monkeypatch.setenv(dispatch.DETERMINISTIC_ENV, "1")
    assert dispatch.deterministic_requested()
    monkeypatch.setenv(dispatch.DETERMINISTIC_ENV, "0")
    assert dispatch.deterministic_requested() == torch.are_deterministic_algorithms_enabled()


def test_split_backward_uses_two_streams_on_a_gpu_unless_told_not_to(monkeypatch):
    """The split pair's dQ/dR runs on a side stream beside dK/dU/dV on CUDA devices
    (bitwise the same gradients and the speed-up measured by
    benchmarks/bwd_streams_check.py); MHFGEN_BACKWARD_STREAMS=1 keeps one stream."""
    from mhfgen.kernels.dispatched import STREAMS_ENV, two_streams

    monkeypatch.delenv(STREAMS_ENV, raising=False)
    assert not two_streams(torch.device("cpu"))
    assert two_streams(torch.device("cuda", 0))
    monkeypatch.setenv(STREAMS_ENV, "1")
    assert not two_streams(torch.device("cuda", 0))
    monkeypatch.setenv(STREAMS_ENV, "2")
    assert two_streams(torch.device("cuda", 0))


def test_autograd_runs_the_dispatched_backward(monkeypatch):
    """mhfgen.flash_mhf's backward is kernels.backward: the one pass where the (faked)
    stored times say it is the faster form."""
    import mhfgen

    calls = []
    real = flash_mhf_bwd_fused

    def spy(*args, config=None):
        calls.append(config)
        return real(*args, config=config)

    _choices(
        monkeypatch,
        {"bwd": 2.0, "bwd_dq": 1.0, "bwd_dkv": 1.5},
        {"bwd": 16, "bwd_dq": 16, "bwd_dkv": 16},
    )
    monkeypatch.setattr(dispatch.registry.get("flash_mhf_bwd_fused"), "launch_fn", lambda: spy)
    dispatch.clear_cache()
    (q, k, u, v, r, do), ref = inputs_and_reference(SMALL, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, u, v, r)]
    mhfgen.flash_mhf(*leaves).backward(do)
    monkeypatch.undo()
    dispatch.clear_cache()
    assert len(calls) == 1
    for name, leaf in zip(("dq", "dk", "du", "dv", "dr"), leaves):
        assert_close(name, leaf.grad, ref[name], torch.float32, SMALL)


def _spec_tokens(q, k, u, v, r):
    problem = kernels.dispatched.check_flash_mhf_inputs(q, k, u, v, r)
    return kernels.dispatched.spec_of(problem, q), problem.tokens, q.device


# -- the TMA form, compiled for sm90 on the CPU ------------------------------------------
SPEC_D96 = KernelSpec(8, 2, 96, 8, 80, "float16", "sm90")
SM90_CASES = [  # (spec, config): the 1.3B sweep's best, token splits, D = 96 with De = 80
    (
        SPEC_13B,
        fused.Config(
            block_m=128,
            block_n=64,
            num_warps=8,
            num_stages=2,
            transpose_acc=True,
            tma=True,
            sigmoid="tanh",
        ),
    ),
    (
        SPEC_13B,
        fused.Config(block_m=64, block_n=32, num_warps=8, num_stages=2, tma=True, token_splits=3),
    ),
    (
        SPEC_D96,
        fused.Config(
            block_m=64,
            block_n=64,
            num_warps=8,
            num_stages=2,
            transpose_acc=True,
            tma=True,
            sigmoid="tanh",
            head_chunk=2,
        ),
    ),
    (
        SPEC_D96,
        fused.Config(block_m=64, block_n=32, num_warps=4, num_stages=2, tma=True, token_splits=2),
    ),
]


@pytest.mark.parametrize(
    "spec,config", SM90_CASES, ids=[f"{s.key()}-{c.describe()}" for s, c in SM90_CASES]
)
def test_tma_form_compiles_for_sm90(spec, config):
    """The TMA loads and reductions cannot run in the interpreter: compile them for sm90
    here (wgmma MMAs, TMA loads of q/dO, TMA reduce-adds of dq), within shared memory."""
    from sm90_compile import compile_report

    config.check_for(spec)
    report = compile_report("flash_mhf_bwd_fused", spec, config)
    assert report["wgmma"] > 0 and report["tma_loads"] > 0 and report["tma_reduces"] > 0
    assert report["shared"] <= 232448
    assert report["shared"] <= fused.FlashMhfBwdFused().shared_memory(spec, config)
