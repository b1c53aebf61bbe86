"""The Gluon one-pass backward (flash_mhf_bwd_ws) on the CPU: its config checks (what it
supports and its launch: tests/test_gluon_backward.py), its heuristic within the
workspace budget, and every schedule compiled for sm90 (Gluon kernels do not run in the
interpreter; their numbers and deadlocks are checked on the GPU by
benchmarks/bwd_ws_check.py)."""

import dataclasses

import pytest
from sm90_compile import gluon_report

from mhfgen import registry, workspace
from mhfgen.codegen import render
from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_bwd_ws as ws

SPEC_13B = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
SPEC_D64_GQA = KernelSpec(16, 4, 64, 11, 256, "float16", "sm90")
SPEC_L37_GQA = KernelSpec(8, 2, 128, 4, 128, "bfloat16", "sm90")
SPEC_E1 = KernelSpec(4, 4, 64, 1, 512, "bfloat16", "sm90")
#: head dims the kernel pads to 128 columns (mhfgen.kernels.sm90.backward_head_dim_pad),
#: on the 128M preset's other sizes
PADDED = [KernelSpec(8, 8, d, 8, 256, "bfloat16", "sm90") for d in (80, 96, 112)]


@pytest.mark.parametrize(
    "field,value",
    [
        ("block_m", 48),
        ("stages", 1),
        ("sigmoid", "erf"),
        ("token_splits", 0),
        ("head_chunk", 0),
        ("grads_regs", 100),
        ("producer_regs", 20),
        ("dq_vec", 1),
    ],
)
def test_bad_config_fields_are_value_errors(field, value):
    with pytest.raises(ValueError, match=field):
        ws.BwdWsConfig(**{field: value})


def test_config_round_trips_through_json():
    config = ws.BwdWsConfig(
        block_m=64,
        stages=3,
        sigmoid="exp",
        token_splits=3,
        head_chunk=2,
        grads_regs=160,
        dq_vec=True,
    )
    variant = registry.get("flash_mhf_bwd_ws")
    import json

    assert variant.config_from_dict(json.loads(config.to_json())) == config
    assert "vec" in config.describe() and "ts3" in config.describe()


def test_heuristic_stays_within_the_workspace_budget():
    config = ws.default_config(SPEC_13B, 16384, 132)
    assert config.block_m == 32 and config.head_chunk == 1
    assert workspace.workspace_bytes(SPEC_13B, config, 16384) <= workspace.workspace_budget(
        SPEC_13B, 16384
    )
    assert ws.default_config(SPEC_D64_GQA, 16384, 132).block_m == 64
    small = ws.default_config(SPEC_13B, 2048, 132)  # 1 MiB per head: more per launch
    assert small.head_chunk > 1
    variant = registry.get("flash_mhf_bwd_ws")
    wide = dataclasses.replace(config, head_chunk=16)
    assert "budget" in variant.prune_reason(SPEC_13B, wide, 16384, 132)
    assert variant.prune_reason(SPEC_13B, config, 16384, 132) is None


def test_register_split_leaves_warpgroup_a_enough():
    assert ws.config_problems(SPEC_13B, ws.BwdWsConfig(grads_regs=256, producer_regs=256))
    assert not ws.config_problems(SPEC_13B, ws.BwdWsConfig())


@pytest.mark.parametrize(
    "spec", [SPEC_13B, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1, *PADDED], ids=lambda s: s.key()
)
def test_every_spec_renders(spec):
    for config in (ws.BwdWsConfig(), ws.BwdWsConfig(token_splits=2, dq_vec=True, sigmoid="exp")):
        source = render("flash_mhf_bwd_ws", spec, config)
        compile(source, "flash_mhf_bwd_ws", "exec")
        assert "def flash_mhf_bwd_ws_kernel" in source


COMPILE_CASES = [
    (SPEC_13B, ws.BwdWsConfig()),
    (SPEC_13B, ws.BwdWsConfig(dq_vec=True, sigmoid="exp", stages=3)),
    (SPEC_13B, ws.BwdWsConfig(token_splits=3, grads_regs=160)),
    (SPEC_D64_GQA, ws.BwdWsConfig(block_m=64, dq_vec=True)),
    (SPEC_L37_GQA, ws.BwdWsConfig(head_chunk=2)),
    (SPEC_E1, ws.BwdWsConfig(stages=4, sigmoid="exp")),
    *[(spec, ws.default_config(spec, 16384, 132)) for spec in PADDED],
    *[
        (spec, ws.BwdWsConfig(dq_vec=True, sigmoid="exp", stages=3, token_splits=2))
        for spec in PADDED
    ],
]


@pytest.mark.parametrize(
    "spec,config", COMPILE_CASES, ids=[f"{s.key()}-{c.describe()}" for s, c in COMPILE_CASES]
)
def test_compiles_for_sm90_within_its_shared_memory_estimate(spec, config):
    assert not ws.config_problems(spec, config)  # a config the tuner may propose
    report = gluon_report(ws, spec, config)
    estimate = ws.shared_memory(spec, config)
    assert report.shared <= estimate <= report.shared + 1536
    assert report.wgmma > 0 and report.tma_loads > 0
    assert report.registers > 0
