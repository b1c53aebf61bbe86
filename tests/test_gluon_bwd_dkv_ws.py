"""The Gluon dK/dU/dV backward (flash_mhf_bwd_dkv_ws) on the CPU: its config checks (what it
supports, its place among the variants and its launch: test_gluon_backward.py) and
heuristic, deterministic routing, and its schedules compiled for sm90 within the
shared-memory estimate (Gluon kernels do not run in the interpreter; their numbers and
deadlocks are checked on the GPU by benchmarks/bwd_dkv_ws_check.py)."""

import dataclasses
import json

import pytest
from sm90_compile import gluon_report

from mhfgen import registry
from mhfgen.codegen import render
from mhfgen.kernels.sm90 import backward_head_dim_pad
from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_bwd_dkv_ws as ws
from mhfgen.variants._gluon import token_split_plan, wave_token_splits

SPEC_13B = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
SPEC_370M = KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90")
SPEC_D64_GQA = KernelSpec(16, 4, 64, 11, 256, "float16", "sm90")
SPEC_L37_GQA = KernelSpec(8, 2, 128, 4, 128, "bfloat16", "sm90")
SPEC_E1 = KernelSpec(4, 4, 64, 1, 512, "bfloat16", "sm90")
#: head dims the kernel pads to 128 columns (mhfgen.kernels.sm90.backward_head_dim_pad),
#: on the 128M preset's other sizes
PADDED = [KernelSpec(8, 8, d, 8, 256, "bfloat16", "sm90") for d in (80, 96, 112)]
STEM = "flash_mhf_bwd_dkv_ws"


@pytest.mark.parametrize(
    "field,value",
    [
        ("stages", 1),
        ("stages", 9),
        ("split", "cols"),
        ("sigmoid", "erf"),
        ("token_splits", 0),
        ("consumer_regs", 100),
        ("producer_regs", 20),
        ("joint_scores", 1),
        ("joint_grads", 1),
    ],
)
def test_bad_config_fields_are_value_errors(field, value):
    with pytest.raises(ValueError, match=field):
        ws.BwdDkvWsConfig(**{field: value})


def test_config_round_trips_through_json_and_describes_itself():
    config = ws.BwdDkvWsConfig(
        stages=3, sigmoid="exp", token_splits=2, consumer_regs=232, producer_regs=40
    )
    variant = registry.get(STEM)
    assert variant.config_from_dict(json.loads(config.to_json())) == config
    assert config.describe() == "s3 regs 40/232 ts2 exp"
    assert ws.BwdDkvWsConfig().describe() == "s2 regs 24/240"
    assert ws.BwdDkvWsConfig(split="rows", stages=4).describe() == "s4 regs 24/240 rows"
    joint = ws.BwdDkvWsConfig(split="rows", stages=3, joint_scores=True)
    assert joint.describe() == "s3 regs 24/240 rows joint"
    assert variant.config_from_dict(json.loads(joint.to_json())) == joint
    grads = dataclasses.replace(joint, joint_grads=True)
    assert grads.describe() == "s3 regs 24/240 rows joint jgrads"
    assert variant.config_from_dict(json.loads(grads.to_json())) == grads


def test_joint_grads_needs_the_rows_split_and_head_dim_128():
    with pytest.raises(ValueError, match="joint_grads needs split='rows'"):
        ws.BwdDkvWsConfig(joint_grads=True)
    config = ws.BwdDkvWsConfig(split="rows", stages=3, joint_grads=True)
    assert ws.config_problems(SPEC_13B, config) == []
    assert any(
        "joint_grads needs head_dim 128" in p for p in ws.config_problems(SPEC_D64_GQA, config)
    )


def test_joint_grads_changes_the_code_only_where_it_is_set():
    """Without joint_grads a config adds no static parameter (its stored winners keep their
    code hashes); with it, the accumulators are transposed and dK, dU one wgmma chain."""
    plain = ws.BwdDkvWsConfig(split="rows", stages=3, joint_scores=True)
    grads = dataclasses.replace(plain, joint_grads=True)
    assert "joint_grads" not in ws.static_params(SPEC_13B, plain)
    assert ws.static_params(SPEC_13B, grads)["joint_grads"] is True
    plain_code, grads_code = render(STEM, SPEC_13B, plain), render(STEM, SPEC_13B, grads)
    assert "dkut" not in plain_code and "_store_grad_t" not in plain_code
    assert "dkut" in grads_code and "def _store_grad_t" in grads_code
    assert ws.shared_memory(SPEC_13B, grads) == ws.shared_memory(SPEC_13B, plain)


def test_a_stored_config_from_before_the_split_knob_reads_as_the_tokens_split():
    stored = {
        "stages": 2,
        "sigmoid": "tanh",
        "token_splits": 1,
        "consumer_regs": 240,
        "producer_regs": 24,
    }
    config = registry.get(STEM).config_from_dict(stored)
    assert config == ws.BwdDkvWsConfig() and config.split == "tokens"
    assert not config.joint_scores


def test_the_tokens_split_renders_the_code_it_rendered_before_the_knob():
    """Its stored winners stay current (mhfgen.tuning.lookup.still_current compares code
    hashes): 'tokens' adds no static parameter, and 'rows' changes the code."""
    tokens = ws.BwdDkvWsConfig()
    assert "rows_split" not in ws.static_params(SPEC_13B, tokens)
    assert "rows_split" not in render(STEM, SPEC_13B, tokens)
    rows = render(STEM, SPEC_13B, ws.BwdDkvWsConfig(split="rows"))
    assert "rows_split" in rows and "def _weight" in rows


@pytest.mark.parametrize("split", ["tokens", "rows"])
def test_joint_scores_changes_the_code_only_where_it_is_set(split):
    """Without joint_scores a config adds no static parameter and renders one wgmma chain
    per score product (its stored winners keep their code hashes); with it, K and U share
    one shared tile and [S | A] is split in registers."""
    plain = ws.BwdDkvWsConfig(split=split)
    joint = dataclasses.replace(plain, joint_scores=True)
    assert "joint_scores" not in ws.static_params(SPEC_13B, plain)
    assert ws.static_params(SPEC_13B, joint)["joint_scores"] is True
    plain_code, joint_code = render(STEM, SPEC_13B, plain), render(STEM, SPEC_13B, joint)
    assert "ku_smem" not in plain_code and "_split_scores" not in plain_code
    assert "ku_smem" in joint_code and "def _split_scores" in joint_code
    assert ws.shared_memory(SPEC_13B, joint) == ws.shared_memory(SPEC_13B, plain)


def test_resources_rule_out_what_cannot_fit():
    # D = 128: a third ring slot would need 288 KiB of shared memory
    assert "shared memory" in ws.config_problems(SPEC_13B, ws.BwdDkvWsConfig(stages=3))[0]
    assert not ws.config_problems(SPEC_13B, ws.BwdDkvWsConfig())
    assert not ws.config_problems(SPEC_D64_GQA, ws.BwdDkvWsConfig(stages=4))
    greedy = ws.BwdDkvWsConfig(consumer_regs=256, producer_regs=120)
    assert "fewer than 192" in ws.config_problems(SPEC_13B, greedy)[0]
    # 'rows': 64-token slots of 32 KiB at D = 128: four fit (200 KiB), six do not
    assert not ws.config_problems(SPEC_13B, ws.BwdDkvWsConfig(split="rows", stages=4))
    six = ws.config_problems(SPEC_13B, ws.BwdDkvWsConfig(split="rows", stages=6))
    assert "shared memory" in six[0]
    assert not ws.config_problems(SPEC_D64_GQA, ws.BwdDkvWsConfig(split="rows", stages=8))
    # and half-width score tiles: 144 registers a consumer thread
    assert ws.consumer_registers(SPEC_13B, ws.BwdDkvWsConfig(split="rows")) == 144
    assert (
        "fewer than 144"
        in ws.config_problems(
            SPEC_13B, ws.BwdDkvWsConfig(split="rows", consumer_regs=256, producer_regs=136)
        )[0]
    )


def test_heuristic_fits_and_splits_only_few_weight_tiles():
    for spec in (SPEC_13B, SPEC_370M, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1):
        config = ws.default_config(spec, 16384, 132)
        assert not ws.config_problems(spec, config), spec.key()
        assert registry.get(STEM).prune_reason(spec, config, 16384, 132) is None
    assert ws.default_config(SPEC_13B, 16384, 132).token_splits == 1  # 1408 programs
    assert ws.default_config(SPEC_13B, 16384, 132).split == "rows"
    assert ws.default_config(SPEC_13B, 16384, 132).joint_scores
    # joint transposed gradients with 4 slots at D = 128 without grouped heads only
    assert ws.default_config(SPEC_13B, 16384, 132).joint_grads
    assert ws.default_config(SPEC_370M, 16384, 132).stages == 4
    assert ws.default_config(SPEC_370M, 16384, 132).token_splits == 1  # 352 tiles: 2.67 waves
    gqa = ws.default_config(SPEC_L37_GQA, 16384, 132)
    assert gqa.joint_scores and not gqa.joint_grads and gqa.stages == 3
    assert ws.default_config(SPEC_D64_GQA, 16384, 132).split == "tokens"
    assert not ws.default_config(SPEC_D64_GQA, 16384, 132).joint_scores
    assert ws.default_config(SPEC_D64_GQA, 16384, 132).stages == 3
    small = ws.default_config(SPEC_E1, 16384, 132)  # 32 weight tiles: split the tokens
    assert small.token_splits > 1
    assert ws.default_config(SPEC_E1, 1, 132).token_splits == 1  # one row block


def test_prune_reason_names_token_splits_past_the_row_blocks():
    variant = registry.get(STEM)
    config = ws.BwdDkvWsConfig(token_splits=4)
    assert "row blocks" in variant.prune_reason(SPEC_E1, config, 200, 132)
    assert "programs" in variant.prune_reason(SPEC_13B, config, 16384, 132)


def test_deterministic_runs_drop_its_token_splits():
    """The dispatched backward's deterministic form replaces token_splits with 1; the
    config type must allow that (and then adds nothing by atomics)."""
    config = dataclasses.replace(ws.BwdDkvWsConfig(token_splits=4), token_splits=1)
    assert ws.static_params(SPEC_13B, config)["token_split"] is False


@pytest.mark.parametrize(
    "tokens,splits,expect",
    [
        (1, 2, (1, 1, True)),  # one row block: one split, but the template still adds
        (37, 4, (1, 1, True)),
        (16384, 1, (128, 1, False)),
        (16384, 4, (32, 4, True)),
        (1000, 3, (3, 3, True)),  # 8 blocks: 3 + 3 + 2
    ],
)
def test_token_split_plan_zeroes_fp32_buffers_whenever_the_template_adds(tokens, splits, expect):
    config = ws.BwdDkvWsConfig(token_splits=splits)
    assert token_split_plan(tokens, config) == expect
    assert ws.static_params(SPEC_13B, config)["token_split"] == expect[2]


def test_token_split_plan_counts_the_rows_split_in_64_token_tiles():
    assert token_split_plan(16384, ws.BwdDkvWsConfig(split="rows")) == (256, 1, False)
    assert token_split_plan(1000, ws.BwdDkvWsConfig(split="rows", token_splits=3)) == (
        6,
        3,
        True,
    )  # 16 tiles: 6 + 6 + 4


@pytest.mark.parametrize(
    "spec", [SPEC_13B, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1, *PADDED], ids=lambda s: s.key()
)
def test_every_spec_renders(spec):
    for config in (
        ws.BwdDkvWsConfig(),
        ws.BwdDkvWsConfig(token_splits=2, sigmoid="exp"),
        ws.BwdDkvWsConfig(split="rows", token_splits=2),
    ):
        source = render(STEM, spec, config)
        compile(source, STEM, "exec")
        assert f"def {STEM}_kernel" in source
        assert ("gl.atomic_add" in source) == (config.token_splits > 1)


COMPILE_CASES = [
    (SPEC_13B, ws.BwdDkvWsConfig()),
    (
        SPEC_13B,
        ws.BwdDkvWsConfig(sigmoid="exp", token_splits=2, producer_regs=40, consumer_regs=232),
    ),
    (SPEC_D64_GQA, ws.BwdDkvWsConfig(stages=3)),
    (SPEC_L37_GQA, ws.BwdDkvWsConfig()),
    (SPEC_E1, ws.BwdDkvWsConfig(stages=4, sigmoid="exp")),
    (SPEC_13B, ws.BwdDkvWsConfig(split="rows", stages=3)),
    (SPEC_13B, ws.BwdDkvWsConfig(split="rows", stages=4, sigmoid="exp", token_splits=2)),
    (SPEC_D64_GQA, ws.BwdDkvWsConfig(split="rows", stages=8)),
    (SPEC_L37_GQA, ws.BwdDkvWsConfig(split="rows", stages=4, producer_regs=40, consumer_regs=232)),
    (SPEC_13B, ws.BwdDkvWsConfig(split="rows", stages=3, joint_scores=True)),
    (
        SPEC_13B,
        ws.BwdDkvWsConfig(split="rows", stages=4, sigmoid="exp", token_splits=2, joint_scores=True),
    ),
    (SPEC_D64_GQA, ws.BwdDkvWsConfig(stages=3, joint_scores=True)),
    (SPEC_E1, ws.BwdDkvWsConfig(split="rows", stages=6, joint_scores=True)),
    (SPEC_L37_GQA, ws.BwdDkvWsConfig(joint_scores=True)),
    (SPEC_13B, ws.BwdDkvWsConfig(split="rows", stages=3, joint_scores=True, joint_grads=True)),
    (SPEC_370M, ws.BwdDkvWsConfig(split="rows", stages=4, joint_grads=True)),
    (
        SPEC_L37_GQA,
        ws.BwdDkvWsConfig(
            split="rows",
            stages=2,
            sigmoid="exp",
            token_splits=2,
            joint_scores=True,
            joint_grads=True,
        ),
    ),
    *[(spec, ws.default_config(spec, 16384, 132)) for spec in PADDED],
    *[(spec, ws.BwdDkvWsConfig(split="rows", stages=3, token_splits=2)) for spec in PADDED],
]


@pytest.mark.parametrize(
    "spec,config", COMPILE_CASES, ids=[f"{s.key()}-{c.describe()}" for s, c in COMPILE_CASES]
)
def test_compiles_for_sm90_within_its_shared_memory_estimate(spec, config):
    assert not ws.config_problems(spec, config)  # a config the tuner may propose
    report = gluon_report(ws, spec, config)
    estimate = ws.shared_memory(spec, config)
    assert report.shared <= estimate <= report.shared + 1024
    # per consumer: 3 score products (2 with joint_scores: [S | A] and dP) x 2 head_dim
    # halves (K = D / 2: D / 32 instructions each), issued before and in the loop, and the
    # accumulating wgmma (K = 64 tokens: 4 instructions each): 6 for 'tokens' (two
    # 64-token blocks), 3 for 'rows', 2 with joint_grads ([dK^T | dU^T] and dV^T)
    accumulating = 6 if config.split == "tokens" else 2 if config.joint_grads else 3
    chains = 4 if config.joint_scores else 6
    d = backward_head_dim_pad(spec)  # the tiles' head_dim
    assert report.wgmma == 2 * (2 * chains * (d // 32) + accumulating * 4)
    if config.split == "tokens":
        assert report.tma_loads == 6 + 8  # K/U/V halves once, then q/dO per tile
    else:
        assert report.tma_loads == 12 + 4  # K/U/V halves x row blocks, q/dO halves
    if d == 128 and config.split == "rows":
        assert report.spill_bytes <= 8  # the 'tokens' split spills 468 bytes here


@pytest.mark.parametrize(
    "programs, blocks, splits",
    [
        (352, 1024, 1),  # 2.67 waves: dQ/dR, beside it, fills the last one
        (1408, 1024, 1),
        (264, 1024, 1),  # 2 whole waves already
        (131, 1024, 3),  # under two waves: splits for two
        (32, 1024, 9),
        (32, 12, 3),  # ... at most blocks / 4
        (32, 3, 1),
    ],
)
def test_wave_token_splits_fill_two_waves_and_no_more(programs, blocks, splits):
    assert wave_token_splits(programs, blocks, 132) == splits
