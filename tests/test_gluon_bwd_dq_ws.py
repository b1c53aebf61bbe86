"""The Gluon dQ/dR backward (flash_mhf_bwd_dq_ws) on the CPU: its config checks (what it
supports, its place among the variants and its launch: test_gluon_backward.py) and
heuristic, and its schedules compiled for sm90 within the shared-memory estimate, without
spills (Gluon kernels do not run in the interpreter; their numbers and deadlocks are
checked on the GPU by benchmarks/bwd_dq_ws_check.py)."""

import dataclasses
import json

import pytest
from sm90_compile import gluon_report

from mhfgen import registry
from mhfgen.codegen import render
from mhfgen.kernels.sm90 import backward_head_dim_pad
from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_bwd_dq_ws as ws

SPEC_13B = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
SPEC_D64_GQA = KernelSpec(16, 4, 64, 11, 256, "float16", "sm90")
SPEC_L37_GQA = KernelSpec(8, 2, 128, 4, 128, "bfloat16", "sm90")
SPEC_E1 = KernelSpec(4, 4, 64, 1, 512, "bfloat16", "sm90")
STEM = "flash_mhf_bwd_dq_ws"
#: head dims the kernel pads to 128 columns (mhfgen.kernels.sm90.backward_head_dim_pad),
#: on the 128M preset's other sizes
PADDED = [KernelSpec(8, 8, d, 8, 256, "bfloat16", "sm90") for d in (80, 96, 112)]


@pytest.mark.parametrize(
    "field,value",
    [
        ("stages", 1),
        ("stages", 7),
        ("sigmoid", "erf"),
        ("consumer_regs", 100),
        ("producer_regs", 20),
        ("joint_scores", "yes"),
    ],
)
def test_bad_config_fields_are_value_errors(field, value):
    with pytest.raises(ValueError, match=field):
        ws.BwdDqWsConfig(**{field: value})


def test_config_round_trips_through_json_and_describes_itself():
    config = ws.BwdDqWsConfig(stages=5, sigmoid="exp", consumer_regs=232, producer_regs=40)
    assert registry.get(STEM).config_from_dict(json.loads(config.to_json())) == config
    assert config.describe() == "s5 regs 40/232 exp"
    assert ws.BwdDqWsConfig().describe() == "s3 regs 24/240"
    joint = ws.BwdDqWsConfig(joint_scores=True, sigmoid="exp")
    assert joint.describe() == "s3 regs 24/240 joint exp"
    assert registry.get(STEM).config_from_dict(json.loads(joint.to_json())) == joint


def test_a_stored_config_from_before_the_knobs_reads_without_them():
    stored = {"stages": 3, "sigmoid": "tanh", "consumer_regs": 240, "producer_regs": 24}
    assert registry.get(STEM).config_from_dict(stored) == ws.BwdDqWsConfig(wait_dq=False)


def test_joint_scores_changes_the_code_only_where_it_is_set():
    """Without the knob no static parameter is added (stored winners keep their code
    hashes); with it, K and U share one ring tile and [S | A] is split in registers."""
    plain, joint = ws.BwdDqWsConfig(), ws.BwdDqWsConfig(joint_scores=True)
    assert "joint_scores" not in ws.static_params(SPEC_13B, plain)
    plain_code, joint_code = render(STEM, SPEC_13B, plain), render(STEM, SPEC_13B, joint)
    assert "ku_smem" not in plain_code and "_split_scores" not in plain_code
    assert "ku_smem" in joint_code and "def _split_scores" in joint_code
    assert ws.shared_memory(SPEC_13B, joint) == ws.shared_memory(SPEC_13B, plain)


def test_stored_configs_without_wait_dq_keep_their_code():
    """A winner stored before the knob existed reads as wait_dq=False and renders the code
    it was tuned with (no static parameter); new configs wait for dq's MMAs per tile."""
    stored = {"stages": 3, "sigmoid": "tanh", "consumer_regs": 240, "producer_regs": 24}
    old = registry.get(STEM).config_from_dict(stored)
    assert not old.wait_dq and ws.BwdDqWsConfig().wait_dq
    assert "wait_dq" not in ws.static_params(SPEC_13B, old)
    old_code, new_code = render(STEM, SPEC_13B, old), render(STEM, SPEC_13B, ws.BwdDqWsConfig())
    assert "warpgroup_mma_wait(num_outstanding=2, deps=(dq, ))" in old_code
    assert "warpgroup_mma_wait(num_outstanding=2" not in new_code
    assert "mbarrier.arrive(w_free.index(s))" in new_code
    assert ws.default_config(SPEC_13B, 16384, 132).wait_dq


def test_resources_rule_out_what_cannot_fit():
    # D = 128: q and dO of 128 rows (64 KiB) and 48 KiB per ring slot: 3 slots fit, 4 do not
    assert not ws.config_problems(SPEC_13B, ws.BwdDqWsConfig(stages=3))
    assert "shared memory" in ws.config_problems(SPEC_13B, ws.BwdDqWsConfig(stages=4))[0]
    assert not ws.config_problems(SPEC_D64_GQA, ws.BwdDqWsConfig(stages=6))
    greedy = ws.BwdDqWsConfig(consumer_regs=256, producer_regs=120)
    assert "fewer than 192" in ws.config_problems(SPEC_13B, greedy)[0]
    variant = registry.get(STEM)
    assert "shared memory" in variant.prune_reason(SPEC_13B, ws.BwdDqWsConfig(stages=4), 16384, 132)


def test_heuristic_takes_the_deepest_ring_that_fits():
    assert ws.default_config(SPEC_13B, 16384, 132).stages == 3
    assert ws.default_config(SPEC_D64_GQA, 16384, 132).stages == 4
    assert ws.default_config(SPEC_13B, 16384, 132).joint_scores
    for spec in (SPEC_13B, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1):
        config = ws.default_config(spec, 16384, 132)
        assert registry.get(STEM).prune_reason(spec, config, 16384, 132) is None


@pytest.mark.parametrize(
    "spec", [SPEC_13B, SPEC_D64_GQA, SPEC_L37_GQA, SPEC_E1, *PADDED], ids=lambda s: s.key()
)
def test_every_spec_renders_without_atomics(spec):
    for config in (ws.BwdDqWsConfig(), ws.BwdDqWsConfig(stages=2, sigmoid="exp")):
        source = render(STEM, spec, config)
        compile(source, STEM, "exec")
        assert f"def {STEM}_kernel" in source
        assert "atomic" not in source  # every output written once: deterministic


COMPILE_CASES = [
    (SPEC_13B, ws.BwdDqWsConfig()),
    (SPEC_13B, ws.BwdDqWsConfig(stages=2, sigmoid="exp", producer_regs=40, consumer_regs=232)),
    (SPEC_D64_GQA, ws.BwdDqWsConfig(stages=4)),
    (SPEC_L37_GQA, ws.BwdDqWsConfig()),
    (SPEC_E1, ws.BwdDqWsConfig(stages=6, sigmoid="exp")),
    (SPEC_13B, ws.BwdDqWsConfig(joint_scores=True)),
    (SPEC_13B, ws.BwdDqWsConfig(joint_scores=True, wait_dq=False)),
    (SPEC_D64_GQA, ws.BwdDqWsConfig(stages=4, joint_scores=True, sigmoid="exp")),
    (SPEC_L37_GQA, ws.BwdDqWsConfig(stages=2, joint_scores=True)),
    *[(spec, ws.default_config(spec, 16384, 132)) for spec in PADDED],
    *[(spec, ws.BwdDqWsConfig(stages=2, sigmoid="exp", producer_regs=40)) for spec in PADDED],
    (SPEC_13B, ws.BwdDqWsConfig(joint_scores=True, early_scores=True)),
    (
        SPEC_13B,
        ws.BwdDqWsConfig(joint_scores=True, early_scores=True, consumer_regs=232, producer_regs=40),
    ),
    (SPEC_D64_GQA, ws.BwdDqWsConfig(stages=4, early_scores=True, sigmoid="exp")),
    (PADDED[0], ws.BwdDqWsConfig(stages=2, early_scores=True)),
]


@pytest.mark.parametrize(
    "spec,config", COMPILE_CASES, ids=[f"{s.key()}-{c.describe()}" for s, c in COMPILE_CASES]
)
def test_compiles_for_sm90_within_its_shared_memory_estimate(spec, config):
    assert not ws.config_problems(spec, config)  # a config the tuner may propose
    report = gluon_report(ws, spec, config)
    estimate = ws.shared_memory(spec, config)
    assert report.shared <= estimate <= report.shared + 1024
    # asynchronous wgmma take every register of 240 a thread: at 232 a few values spill
    assert report.spill_bytes == 0 or config.consumer_regs < 240
    # dq's MMAs left in flight into the next tile make ptxas serialise every wgmma
    assert (report.wgmma_serialized != "") == (not config.wait_dq), report.wgmma_serialized
    # per consumer: S, A, dP (K = D padded: D / 16 instructions each; [S | A] one chain
    # with joint_scores) and dq's two (K = 64: 4); with early_scores the first tile's
    # scores once more, before the loop
    d = backward_head_dim_pad(spec)
    chains = 2 if config.joint_scores else 3
    scores = chains * d // 16 * (2 if config.early_scores else 1)
    assert report.wgmma == 2 * (scores + 2 * 4)
    # q and dO of both consumers, K/U/V per tile; a (64, 128) box is two TMA copies
    assert report.tma_loads == 7 * (d // 64)


def test_early_scores_changes_the_code_only_where_it_is_set():
    """Stored winners lack the field: they read early_scores=False and render the code
    they were tuned with; the knob needs wait_dq (the tuner never proposes it otherwise)
    and issues each next tile's scores before waiting for dq's MMAs."""
    stored = json.loads(ws.BwdDqWsConfig(joint_scores=True).to_json())
    del stored["early_scores"]
    config = registry.get(STEM).config_from_dict(stored)
    assert config == ws.BwdDqWsConfig(joint_scores=True)
    assert "early_scores" not in ws.static_params(SPEC_13B, config)
    early = ws.BwdDqWsConfig(joint_scores=True, early_scores=True)
    assert early.describe() == "s3 regs 24/240 joint early"
    assert ws.static_params(SPEC_13B, early)["early_scores"] is True
    assert ws.config_problems(SPEC_13B, dataclasses.replace(early, wait_dq=False)) == [
        "early_scores needs wait_dq"
    ]
    plain_code, early_code = render(STEM, SPEC_13B, config), render(STEM, SPEC_13B, early)
    assert "j1 = gl.minimum(j + 1, INTER // BLOCK_N - 1)" in early_code
    assert "j1 = " not in plain_code
