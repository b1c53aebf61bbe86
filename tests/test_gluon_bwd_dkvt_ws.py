"""The row-owning Gluon dK/dU/dV backward (flash_mhf_bwd_dkvt_ws) on the CPU: its config
checks, resource model, rank among the op's variants and heuristic, token-split plan,
rendering, and its schedules compiled for sm90 within the shared-memory estimate (Gluon
kernels do not run in the interpreter; their numbers and deadlocks are checked on the GPU
by benchmarks/bwd_dkv_ws_check.py)."""

import dataclasses
import json

import pytest
from sm90_compile import gluon_report

from mhfgen import registry
from mhfgen.codegen import render
from mhfgen.kernels.sm90 import backward_head_dim_pad
from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_bwd_dkvt_ws as wst
from mhfgen.variants._gluon import token_split_plan

SPEC_13B = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
SPEC_GQA4 = KernelSpec(16, 4, 128, 22, 256, "bfloat16", "sm90")
SPEC_D64 = KernelSpec(16, 16, 64, 11, 256, "bfloat16", "sm90")
SPEC_D64_GQA = KernelSpec(16, 4, 64, 11, 256, "float16", "sm90")
SPEC_L37_GQA = KernelSpec(8, 2, 128, 4, 128, "bfloat16", "sm90")
SPEC_E1 = KernelSpec(4, 4, 64, 1, 512, "bfloat16", "sm90")
SPEC_DE192 = KernelSpec(4, 4, 64, 3, 192, "bfloat16", "sm90")
#: head dims the kernel pads to 128 columns (mhfgen.kernels.sm90.backward_head_dim_pad),
#: on the 128M preset's other sizes
PADDED = [KernelSpec(8, 8, d, 8, 256, "bfloat16", "sm90") for d in (80, 96, 112)]
STEM = "flash_mhf_bwd_dkvt_ws"
OP_VARIANTS = ["flash_mhf_bwd_dkv_ws", STEM, "flash_mhf_bwd_dkv"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("stages", 1),
        ("stages", 9),
        ("wg_rows", 16),
        ("wg_rows", 128),
        ("sigmoid", "erf"),
        ("token_splits", 0),
        ("consumer_regs", 100),
        ("producer_regs", 20),
    ],
)
def test_bad_config_fields_are_value_errors(field, value):
    with pytest.raises(ValueError, match=field):
        wst.BwdDkvtWsConfig(**{field: value})


def test_config_round_trips_through_json_and_describes_itself():
    config = wst.BwdDkvtWsConfig(
        stages=6, wg_rows=64, sigmoid="exp", token_splits=3, consumer_regs=232, producer_regs=40
    )
    assert registry.get(STEM).config_from_dict(json.loads(config.to_json())) == config
    assert config.describe() == "s6 regs 40/232 wg64 ts3 exp"
    assert wst.BwdDkvtWsConfig().describe() == "s4 regs 24/240 wg32"
    assert (config.block_n, config.block_m) == (128, 64)
    assert wst.BwdDkvtWsConfig().block_n == 64


def test_resources_rule_out_what_cannot_fit():
    # registers: [dK^T | dU^T], dV^T (D x 3 wg_rows) and [S | A], dP (64 x 3 wg_rows)
    assert wst.consumer_registers(SPEC_D64, wst.BwdDkvtWsConfig()) == 96
    assert wst.consumer_registers(SPEC_D64, wst.BwdDkvtWsConfig(wg_rows=64)) == 192
    wide_128 = wst.config_problems(SPEC_13B, wst.BwdDkvtWsConfig(wg_rows=64, stages=2))
    assert any("fewer than 288" in p for p in wide_128)
    # shared memory: 64-token slots of 16 KiB at D = 64, 32 KiB at D = 128
    assert not wst.config_problems(SPEC_D64, wst.BwdDkvtWsConfig(stages=8))
    assert not wst.config_problems(SPEC_D64, wst.BwdDkvtWsConfig(stages=6, wg_rows=64))
    assert not wst.config_problems(SPEC_13B, wst.BwdDkvtWsConfig(stages=4))
    assert "shared memory" in wst.config_problems(SPEC_13B, wst.BwdDkvtWsConfig(stages=6))[0]
    # a 128-row weight tile must lie within one expert
    assert any(
        "expert_dim 192" in p
        for p in wst.config_problems(SPEC_DE192, wst.BwdDkvtWsConfig(wg_rows=64))
    )
    assert not wst.config_problems(SPEC_DE192, wst.BwdDkvtWsConfig())


def test_it_ranks_first_at_head_dim_64_and_with_grouped_heads_only():
    """The heuristic's variant (and a study's first trial) per spec: measured on an H200,
    this kernel before flash_mhf_bwd_dkv_ws at D = 64 and with grouped query heads, after
    it at D = 128 without grouping."""
    for spec in (SPEC_D64, SPEC_D64_GQA, SPEC_GQA4, SPEC_L37_GQA, SPEC_E1):
        assert registry.usable("bwd_dkv", spec)[0].stem == STEM, spec.key()
        assert registry.usable("bwd_dkv", spec, 16384)[0].stem == STEM  # the tuner's
    assert [v.stem for v in registry.usable("bwd_dkv", SPEC_13B)] == OP_VARIANTS
    assert [v.stem for v in registry.usable("bwd_dkv", SPEC_13B, 16384)] == OP_VARIANTS


def test_heuristic_fits_and_takes_wide_rows_at_head_dim_64():
    variant = registry.get(STEM)
    for spec in (SPEC_13B, SPEC_GQA4, SPEC_D64, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1, SPEC_DE192):
        config = wst.default_config(spec, 16384, 132)
        assert not wst.config_problems(spec, config), spec.key()
        assert variant.prune_reason(spec, config, 16384, 132) is None
    d64 = wst.default_config(SPEC_D64, 16384, 132)
    assert (d64.wg_rows, d64.stages, d64.token_splits) == (64, 6, 1)  # 352 tiles: dQ/dR fills
    gqa = wst.default_config(SPEC_GQA4, 16384, 132)
    assert (gqa.wg_rows, gqa.stages, gqa.token_splits) == (32, 3, 1)
    assert wst.default_config(SPEC_13B, 16384, 132).token_splits == 1  # 1408 tiles
    assert wst.default_config(SPEC_DE192, 16384, 132).wg_rows == 32  # 128 does not divide 192
    assert wst.default_config(SPEC_E1, 16384, 132).token_splits > 1  # 16 weight tiles
    assert wst.default_config(SPEC_E1, 1, 132).token_splits == 1


def test_prune_reason_names_token_splits_past_the_row_blocks_or_the_budget():
    variant = registry.get(STEM)
    assert "row blocks" in variant.prune_reason(
        SPEC_E1, wst.BwdDkvtWsConfig(token_splits=4), 150, 132
    )  # 3 tiles
    assert "programs" in variant.prune_reason(
        SPEC_13B, wst.BwdDkvtWsConfig(token_splits=4), 16384, 132
    )


@pytest.mark.parametrize(
    "tokens,splits,expect",
    [
        (1, 2, (1, 1, True)),
        (16384, 1, (256, 1, False)),
        (16384, 3, (86, 3, True)),
        (1000, 3, (6, 3, True)),  # 16 tiles of 64 tokens: 6 + 6 + 4
    ],
)
def test_token_split_plan_counts_64_token_tiles(tokens, splits, expect):
    config = wst.BwdDkvtWsConfig(token_splits=splits)
    assert token_split_plan(tokens, config) == expect
    assert wst.static_params(SPEC_13B, config)["token_split"] == expect[2]


@pytest.mark.parametrize(
    "spec",
    [SPEC_13B, SPEC_D64, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1, *PADDED],
    ids=lambda s: s.key(),
)
def test_every_spec_renders_one_accumulator_pair_per_head_dim_chunk(spec):
    chunks = backward_head_dim_pad(spec) // 64
    for config in (wst.BwdDkvtWsConfig(), wst.BwdDkvtWsConfig(token_splits=2, sigmoid="exp")):
        source = render(STEM, spec, config)
        compile(source, STEM, "exec")
        assert f"def {STEM}_kernel" in source
        assert ("gl.atomic_add" in source) == (config.token_splits > 1)
        assert f"dkut{chunks - 1} = gl.zeros" in source and f"dkut{chunks} " not in source
        assert source.count("_store_grad_t(DV, ") == chunks


def test_deterministic_runs_drop_its_token_splits():
    config = dataclasses.replace(wst.BwdDkvtWsConfig(token_splits=4), token_splits=1)
    assert wst.static_params(SPEC_13B, config)["token_split"] is False


COMPILE_CASES = [
    (SPEC_D64, wst.BwdDkvtWsConfig()),
    (SPEC_D64, wst.BwdDkvtWsConfig(stages=6, wg_rows=64)),
    (SPEC_D64_GQA, wst.BwdDkvtWsConfig(stages=8, sigmoid="exp", token_splits=2)),
    (SPEC_E1, wst.BwdDkvtWsConfig(stages=2, wg_rows=64, producer_regs=40, consumer_regs=232)),
    (SPEC_GQA4, wst.BwdDkvtWsConfig(stages=3)),
    (
        SPEC_L37_GQA,
        wst.BwdDkvtWsConfig(
            stages=4, sigmoid="exp", token_splits=3, producer_regs=40, consumer_regs=232
        ),
    ),
    *[(spec, wst.default_config(spec, 16384, 132)) for spec in PADDED],
    *[(spec, wst.BwdDkvtWsConfig(stages=4, sigmoid="exp", token_splits=2)) for spec in PADDED],
]


@pytest.mark.parametrize(
    "spec,config", COMPILE_CASES, ids=[f"{s.key()}-{c.describe()}" for s, c in COMPILE_CASES]
)
def test_compiles_for_sm90_within_its_shared_memory_estimate(spec, config):
    assert not wst.config_problems(spec, config)  # a config the tuner may propose
    report = gluon_report(wst, spec, config)
    estimate = wst.shared_memory(spec, config)
    assert report.shared <= estimate <= report.shared + 1024
    d = backward_head_dim_pad(spec)  # the tiles' head_dim
    chunks = d // 64
    # per consumer: [S | A] and dP (K = D: D / 16 instructions each), issued before and in
    # the loop, and per head_dim chunk [dK^T | dU^T] and dV^T (K = 64 tokens: 4 each)
    assert report.wgmma == 2 * (2 * 2 * d // 16 + 2 * chunks * 4)
    # K, U, V per warpgroup's rows and chunk once, then q and dO per chunk per tile
    assert report.tma_loads == 6 * chunks + 2 * chunks
    assert report.spill_bytes <= (64 if config.wg_rows == 64 else 0)
