"""The generated forward kernel against the float64 reference (Triton interpreter)."""

import dataclasses

import pytest
import torch
from cases import CASES, CONFIGS, DTYPES, EMPTY, grouped
from kernel_harness import assert_close, inputs_and_reference, run_poisoned

from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("config_index", range(len(CONFIGS["flash_mhf_fwd"])))
def test_forward_matches_reference(case, dtype, config_index):
    config = CONFIGS["flash_mhf_fwd"][config_index]
    if config_index == 2:
        config = grouped(config, case)
    (q, k, u, v, r, _), ref = inputs_and_reference(case, dtype)
    o = run_poisoned(flash_mhf_fwd, q, k, u, v, r, config)
    assert o.shape == q.shape and o.dtype == dtype and o.is_contiguous()
    assert_close("o", o, ref["o"], dtype, case)


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: c.name)
def test_forward_default_config_strided_q_and_r_in_q_dtype(case):
    (q, k, u, v, r, _), ref = inputs_and_reference(case, torch.float32, "strided")
    assert not q.is_contiguous()
    o = run_poisoned(flash_mhf_fwd, q, k, u, v, r.to(q.dtype), None)
    assert_close("o", o, ref["o"], torch.float32, case)


def test_forward_empty_sequence():
    (q, k, u, v, r, _), _ = inputs_and_reference(EMPTY, torch.float32)
    o = flash_mhf_fwd(q, k, u, v, r)
    assert o.shape == (2, 0, 2, 32)


def test_split_reduction_is_deterministic_and_resets_its_counters():
    """inter_splits > 1: the last program of each row block sums the partials in split
    order and zeroes its ticket counter, so repeated launches agree bit for bit and the
    shared counter buffer is all zeros between launches; the same with the counter reset
    by an atomic exchange (store_reset=False, the code of configs stored before the
    field), whose outputs are bitwise the plain store's."""
    from mhfgen.kernels.buffers import split_counters
    from mhfgen.variants.flash_mhf_fwd import Config as Fwd

    case = CASES[2]  # L37_gqa: several row blocks, grouped heads
    (q, k, u, v, r, _), ref = inputs_and_reference(case, torch.float32)
    outputs = []
    for store_reset in (True, False):
        config = Fwd(block_m=16, block_n=16, inter_splits=4, store_reset=store_reset)
        first = flash_mhf_fwd(q, k, u, v, r, config=config)
        assert int(split_counters(1, q.device).abs().sum()) == 0
        second = flash_mhf_fwd(q, k, u, v, r, config=config)
        assert torch.equal(first, second)
        assert int(split_counters(1, q.device).abs().sum()) == 0
        outputs.append(first)
    assert torch.equal(*outputs)
    assert_close("o", outputs[0], ref["o"], torch.float32, case)


def test_the_split_reduction_resets_its_ticket_with_a_plain_store():
    """The last program's counter reset needs no release fence (the next launch is ordered
    after this one): a plain store, where configs stored before store_reset keep the
    acq_rel exchange their code was tuned with; without splits neither is rendered."""
    from mhfgen.codegen import render
    from mhfgen.spec import KernelSpec
    from mhfgen.variants.flash_mhf_fwd import Config as Fwd

    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    split = render("flash_mhf_fwd", spec, Fwd(block_m=16, inter_splits=8))
    assert "        tl.store(counter, 0)" in split and "atomic_xchg" not in split
    legacy = render("flash_mhf_fwd", spec, Fwd(block_m=16, inter_splits=8, store_reset=False))
    assert "        tl.atomic_xchg(counter, 0)" in legacy and "tl.store(counter" not in legacy
    plain = render("flash_mhf_fwd", spec, Fwd(block_m=16))
    assert plain == render("flash_mhf_fwd", spec, Fwd(block_m=16, store_reset=False))
    assert "counter" not in plain


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=lambda c: c.name)
def test_an_unrolled_split_reduction_adds_in_the_same_order(case):
    """reduce_unroll issues several partials' loads together but adds them in split order:
    the result is bitwise the one-at-a-time reduction's, whatever the split count (5: not
    a multiple of the unroll factor)."""
    from mhfgen.variants.flash_mhf_fwd import Config as Fwd

    (q, k, u, v, r, _), ref = inputs_and_reference(case, torch.float32)
    group = case.heads // case.kv_heads
    base = Fwd(block_m=16, block_n=16, inter_splits=5, group_heads=group)
    first = flash_mhf_fwd(q, k, u, v, r, config=base)
    for unroll in (4, 8):
        again = flash_mhf_fwd(
            q, k, u, v, r, config=Fwd(**{**base.as_dict(), "reduce_unroll": unroll})
        )
        assert torch.equal(first, again)
    assert_close("o", first, ref["o"], torch.float32, case)


@pytest.mark.parametrize("dtype", ["bfloat16", "bfloat16_e4m3"])
def test_pdl_prefetches_weights_then_waits_before_any_memory_access(dtype):
    """pdl=True compiles for sm90 with one griddepcontrol.wait, the L2 prefetches of
    the first num_stages tiles of K, U and V before it, and no load, store or atomic
    before it (only L2 is touched early); and one griddepcontrol.launch_dependents, after
    the weight loop (no weight or q load after it: only the reduction's partials)."""
    from sm90_compile import compile_report

    from mhfgen.spec import KernelSpec
    from mhfgen.variants._triton import launch_meta
    from mhfgen.variants.flash_mhf_fwd import Config, pdl_params

    spec = KernelSpec(
        heads=4, kv_heads=2, head_dim=128, experts=3, expert_dim=256, dtype=dtype, target="sm90"
    )
    tiles = dict(block_m=16, block_n=32, num_warps=4, num_stages=3)
    config = Config(**tiles, group_heads=2, inter_splits=8, reduce_unroll=8, pdl=True)
    report = compile_report("flash_mhf_fwd", spec, config)
    lines = pdl_params(spec, config)["pdl_lines"]
    threads = 32 * config.num_warps
    assert report["launch_pdl"] and (report["pdl_launches"], report["pdl_waits"]) == (1, 1)
    assert report["l2_prefetches"] == 3 * max(1, lines // threads)
    assert report["memory_ops_before_wait"] == 0
    assert report["loads_after_signal"] == 0
    plain = compile_report("flash_mhf_fwd", spec, dataclasses.replace(config, pdl=False))
    assert (plain["launch_pdl"], plain["pdl_waits"], plain["l2_prefetches"]) == (False, 0, 0)
    # the launch asks for programmatic dependent launch only where the config does
    assert launch_meta(config)["launch_pdl"] is True
    assert "launch_pdl" not in launch_meta(dataclasses.replace(config, pdl=False))


def test_pdl_is_refused_off_hopper():
    from mhfgen.spec import KernelSpec
    from mhfgen.variants.flash_mhf_fwd import Config

    config = Config(block_m=16, block_n=32, num_warps=4, num_stages=2, pdl=True)
    for target in ("sm80", "interpreter"):
        spec = KernelSpec(2, 2, 64, 2, 64, "float16", target)
        with pytest.raises(ValueError, match="pdl=True .* needs an sm90"):
            config.check_for(spec)


def test_the_gpu_heuristic_past_the_decode_rows_matches_the_reference():
    """32 tokens of 4 query heads per kv head are 128 rows: on an sm90 GPU the heuristic
    halves its row blocks until the split reduction's serial read is bounded (rather than
    one 128-row block per kv head with a wave of splits). That config, run here in the
    interpreter, against float64."""
    from cases import Case

    from mhfgen.registry import default_config
    from mhfgen.spec import KernelSpec
    from mhfgen.variants.flash_mhf_fwd import REDUCE_BYTES, reduce_bytes

    case = Case(
        "L32_gqa4", batch=1, seqlen=32, heads=8, kv_heads=2, head_dim=128, experts=8, expert_dim=256
    )
    spec = KernelSpec(8, 2, 128, 8, 256, "float32", "sm90")
    config = default_config("flash_mhf_fwd", spec, 32, 132)
    rows = 32 * spec.group
    assert config.block_m < 128 and config.group_heads == 4 and config.inter_splits > 1
    assert reduce_bytes(spec, rows, config.block_m, config.inter_splits) <= REDUCE_BYTES
    (q, k, u, v, r, _), ref = inputs_and_reference(case, torch.float32)
    o = run_poisoned(flash_mhf_fwd, q, k, u, v, r, config)
    assert_close("o", o, ref["o"], torch.float32, case)
