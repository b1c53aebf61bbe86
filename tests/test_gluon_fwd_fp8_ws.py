"""The Gluon FP8 (W8A8) forward flash_mhf_fwd_fp8_ws on a machine without a GPU: it renders,
every schedule family and the space's configs compile for sm90 down to cubin with e4m3 x
e4m3 wgmma only, no register spill and within the shared memory the variant's estimate
promises; the registry ranks it first for the FP8-weight dtypes and says why it refuses
other calls; its outputs are held to the FP8-activation bar wherever a candidate is
checked; MHFGEN_FP8_ACTIVATIONS=0 takes it out; the launch passes the kernel's arguments
in order, V transposed. The float64 emulation of its arithmetic
(mhfgen.reference.flash_mhf_w8a8) is checked here too, and on a GPU the kernel against it
(test_kernel_matches_the_emulation_on_a_gpu; benchmarks/fp8_fwd_check.py times it).

`pytest -k gluon` selects these tests.
"""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from sm90_compile import gluon_report

from mhfgen import dispatch, env, registry
from mhfgen.fp8 import (
    column_factors,
    expert_bounds,
    forget_transposed,
    kept_column_factors,
    kept_expert_bounds,
    quantize_experts,
    transpose_v,
    transposed_v,
)
from mhfgen.kernels.sm90 import SM90_SHARED_MEMORY
from mhfgen.reference import flash_mhf, flash_mhf_w8a8
from mhfgen.spec import KernelSpec
from mhfgen.tolerances import (
    FP8_ACTIVATIONS_BAR,
    FP8_EMULATION_BAR,
    ROW_FACTOR,
    relative_error,
    row_error,
    tolerance,
    tolerance_for,
)
from mhfgen.tuning.space import load_space
from mhfgen.variants import flash_mhf_fwd_fp8_ws as f8
from mhfgen.verification import Case, compare, fp8_inputs, make_inputs

STEM = "flash_mhf_fwd_fp8_ws"
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]

#: one config per schedule family the template can generate
FAMILIES = {
    "default": f8.Fp8WsConfig(),
    "joint-scores": f8.Fp8WsConfig(joint_scores=True),
    "p-in-registers": f8.Fp8WsConfig(p_operand="registers"),
    "two-tiles": f8.Fp8WsConfig(unroll_tiles=2),
    "one-consumer-8w": f8.Fp8WsConfig(consumers=1, consumer_warps=8),
    "pingpong": f8.Fp8WsConfig(pingpong=True),
    "kv-group": f8.Fp8WsConfig(group_heads=2),
    "exp-sigmoid": f8.Fp8WsConfig(sigmoid="exp", stages=3),
    "deep-ring": f8.Fp8WsConfig(stages=6, joint_scores=False, pingpong=True),
    "split": f8.Fp8WsConfig(consumers=1, inter_splits=8),
    "staged": f8.Fp8WsConfig(staged_scales=True),
    "split-staged": f8.Fp8WsConfig(consumers=1, inter_splits=8, staged_scales=True),
    "swapped-16": f8.Fp8WsConfig(
        consumers=1, inter_splits=8, staged_scales=True, swap_ab=16, reduce_unroll=8
    ),
    "swapped-64": f8.Fp8WsConfig(consumers=1, inter_splits=8, staged_scales=True, swap_ab=64),
    "swapped-kv-group": f8.Fp8WsConfig(
        group_heads=2, stages=3, inter_splits=8, staged_scales=True, swap_ab=16
    ),
    "swapped-two-blocks": f8.Fp8WsConfig(stages=3, inter_splits=8, staged_scales=True, swap_ab=16),
    "swapped-pdl": f8.Fp8WsConfig(
        consumers=1, inter_splits=8, staged_scales=True, swap_ab=16, reduce_unroll=8, pdl=True
    ),
    "running-max": f8.Fp8WsConfig(act_scale="running"),
    "early-o": f8.Fp8WsConfig(p_buffers=2),
    "early-o-two-tiles-staged": f8.Fp8WsConfig(p_buffers=2, unroll_tiles=2, staged_scales=True),
    "early-o-split": f8.Fp8WsConfig(p_buffers=2, consumers=1, inter_splits=8),
    "running-max-staged-two-tiles": f8.Fp8WsConfig(
        act_scale="running", staged_scales=True, unroll_tiles=2
    ),
    "swapped-running-max": f8.Fp8WsConfig(
        consumers=1,
        inter_splits=8,
        staged_scales=True,
        swap_ab=16,
        reduce_unroll=8,
        pdl=True,
        act_scale="running",
    ),
}

#: (H, Hkv, D, E, De): the 1.3B preset, D = 64 with grouped kv heads, fp16 with E = 1
COMPILE_SPECS = [
    KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90"),  # 1.3B
    KernelSpec(16, 4, 64, 11, 256, "bfloat16_e4m3", "sm90"),  # Hkv < H, D = 64
    KernelSpec(4, 4, 128, 1, 512, "float16_e4m3", "sm90"),  # E = 1, fp16
]


def _wgmma_per_consumer(spec: KernelSpec, config) -> int:
    """S and G of the first tile and of tile j+1 in each loop body (D / 32 e4m3
    instructions each; [S | G] one chain with joint_scores), and O += p8 V8 (BLOCK_N / 32)
    in each: one body, or with two tiles per iteration two and a third for an odd count.
    Swapped (swap_ab), O^T += V8^T p8^T is D / 64 row blocks of BLOCK_N / 32 each."""
    scores = 1 if config.joint_scores else 2
    tiles = spec.experts * spec.expert_dim // config.block_n
    bodies = 1 if config.unroll_tiles == 1 else 2 + tiles % 2
    o_blocks = spec.head_dim // 64 if config.swap_ab else 1
    return scores * spec.head_dim // 32 * (1 + bodies) + config.block_n // 32 * bodies * o_blocks


# ---------------------------------------------------------------------------------------
# code generation and the sm90 compile
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("spec", COMPILE_SPECS, ids=lambda s: s.key())
def test_renders_valid_python(spec, family):
    config = FAMILIES[family]
    if spec.group % config.group_heads:
        config = dataclasses.replace(config, group_heads=1)
    source = f8.render(spec, config)
    tree = ast.parse(source)
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"flash_mhf_fwd_fp8_ws_kernel", "_producer", "_consumer", "_activation"} <= names
    assert f"# spec: {spec.key()}" in source
    assert source.count("(_consumer, (") == config.consumers
    assert ("mbarrier.wait(turn.index(C)" in source) == config.pingpong
    assert ("ku_smem" in source) == config.joint_scores
    # e4m3 operands everywhere, V read transposed (K-major), the running max per token
    # (per row; swapped, per column, and V^T the A operand as it lies)
    swapped = bool(config.swap_ab)
    assert ("vt_smem.index(slot).permute((1, 0))" in source) != swapped
    assert ("warpgroup_mma(vt_smem.index(slot), p8t, o" in source) == swapped
    assert "(qf * q_inv[:, None]).to(gl.float8e4nv)" in source
    axis = 0 if swapped else 1
    running = f"m_new = gl.maximum(m, gl.max(gl.abs(y), axis={axis}) * gl.abs(a))" in source
    assert running == (config.act_scale == "running")
    # a fixed bound: no rescale of O in the loop, the bound rounded up to a power of two
    assert ("o = o * gl.convert_layout(alpha" in source) == running
    assert ("m = _pow2_ceil(m * BOUND_MARGIN)" in source) != running
    # p_buffers = 2: O's product issued from buffer j % 2 before the scores' wait
    early = "p8_b = p8_smem.index(2 * C + j % 2)" in source
    assert early == (config.p_buffers == 2)
    assert ("num_outstanding=1, deps=(o, s_next, g_next))" in source) == (
        early and config.unroll_tiles == 1
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("spec", COMPILE_SPECS[:2], ids=lambda s: s.key())
def test_compiles_for_sm90_to_fp8_wgmma_without_spills(spec, family):
    config = FAMILIES[family]
    if spec.group % config.group_heads:
        config = dataclasses.replace(config, group_heads=1)
    assert f8.config_problems(spec, config) == []
    report = gluon_report(f8, spec, config)
    assert report.cubin_bytes > 0
    # joint [S | G] accumulators cost a few spilled registers at D = 128 (and run slower,
    # so the heuristic keeps them off); every other family fits
    if not (config.joint_scores and spec.head_dim == 128):
        assert report.spill_bytes == 0, report
    # with the activations' A operand in registers ptxas serialises every wgmma; from
    # shared memory they stay asynchronous
    assert (report.wgmma_serialized != "") == (config.p_operand == "registers"), report
    assert report.registers <= f8.max_registers(config)
    # the estimate the tuner prunes with may not promise less than the kernel takes
    assert report.shared <= f8.shared_memory(spec, config) <= SM90_SHARED_MEMORY
    # every tensor-core product is e4m3 x e4m3 (wgmma.mma_async...f32.e4m3.e4m3)
    assert report.wgmma == report.fp8_wgmma == _wgmma_per_consumer(spec, config) * config.consumers
    assert report.tma_loads >= 4  # q, k, u, v^T loads (and the o store)


def _space_sample(spec: KernelSpec) -> list:
    """The space's candidates for `spec` at 16384 tokens on 132 SMs, as the tuner
    enumerates them: the first, the last and every 23rd between."""
    configs = load_space(STEM, "sm90").candidates(spec, 16384, 132)
    assert configs, "the space proposes nothing"
    return sorted({*configs[::23], configs[-1]}, key=configs.index)


@pytest.mark.parametrize("spec", COMPILE_SPECS, ids=lambda s: s.key())
def test_default_and_tuner_style_configs_compile(spec):
    configs = [f8.default_config(spec, 16384), *_space_sample(spec)]
    for config in configs:
        assert f8.config_problems(spec, config) == [], config.describe()
        report = gluon_report(f8, spec, config)
        if not config.joint_scores:
            assert report.spill_bytes == 0, (config.describe(), report)
        assert report.shared <= f8.shared_memory(spec, config), config.describe()
        assert report.fp8_wgmma == report.wgmma > 0, config.describe()


def test_the_16_bit_forward_has_no_fp8_wgmma():
    """The report's e4m3 count tells the two forwards apart (it is not every wgmma)."""
    from mhfgen.variants import flash_mhf_fwd_ws as ws

    spec = KernelSpec(16, 4, 64, 11, 256, "bfloat16", "sm90")
    report = gluon_report(ws, spec, ws.WsConfig())
    assert report.wgmma > 0 and report.fp8_wgmma == 0


def test_block_n_128_is_refused_for_its_registers():
    spec = COMPILE_SPECS[0]
    config = f8.Fp8WsConfig(block_n=128, consumers=1, stages=3)
    assert any("accumulator registers" in p for p in f8.config_problems(spec, config))


@pytest.mark.parametrize(
    "field, value",
    [
        ("block_n", 32),
        ("stages", 2),
        ("consumers", 3),
        ("consumer_warps", 6),
        ("pingpong", "false"),
        ("sigmoid", "fast"),
        ("producer_regs", 25),
        ("joint_scores", 0),
    ],
)
def test_config_rejects_bad_fields(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        f8.Fp8WsConfig(**{field: value})


def test_config_problems_name_the_reason():
    spec = KernelSpec(16, 16, 128, 22, 320, "bfloat16_e4m3", "sm90")  # 320 = 5 x 64
    assert f8.config_problems(spec, f8.Fp8WsConfig()) == []
    assert any(
        "must divide expert_dim" in p for p in f8.config_problems(spec, f8.Fp8WsConfig(block_n=128))
    )
    assert any("shared memory" in p for p in f8.config_problems(spec, f8.Fp8WsConfig(stages=8)))
    gqa = KernelSpec(16, 16, 64, 11, 256, "bfloat16_e4m3", "sm90")
    assert any("group_heads" in p for p in f8.config_problems(gqa, f8.Fp8WsConfig(group_heads=2)))
    # two swapped consumers of 64 tokens on 64-row tiles at D = 128 spill; 32 on 128 do not
    pair = dict(stages=3, inter_splits=2, staged_scales=True)
    wide = f8.Fp8WsConfig(swap_ab=64, block_n=64, **pair)
    assert any("spill" in p for p in f8.config_problems(spec, wide))
    assert f8.config_problems(spec, dataclasses.replace(wide, consumers=1)) == []
    assert f8.config_problems(spec, f8.Fp8WsConfig(swap_ab=32, block_n=64, **pair)) == []
    # two activation buffers need the fixed bound (a running maximum rescales O first)
    for bad in (dict(act_scale="running"), dict(pingpong=True), dict(joint_scores=True)):
        problems = f8.config_problems(spec, f8.Fp8WsConfig(p_buffers=2, **bad))
        assert any("p_buffers=2" in p for p in problems), bad
    assert f8.config_problems(spec, f8.Fp8WsConfig(p_buffers=2)) == []


# ---------------------------------------------------------------------------------------
# the registry and dispatch
# ---------------------------------------------------------------------------------------

SM90_FP8 = KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90")


@pytest.mark.parametrize(
    "spec, reason",
    [
        (KernelSpec(8, 8, 128, 11, 256, "bfloat16_e4m3", "sm89"), "not sm89"),
        (KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90"), "bfloat16_e4m3"),
        (KernelSpec(8, 8, 96, 11, 256, "bfloat16_e4m3", "sm90"), "head_dim 64 or 128"),
        (KernelSpec(8, 8, 32, 11, 256, "float16_e4m3", "sm90"), "head_dim 64 or 128"),
        (KernelSpec(8, 8, 128, 11, 80, "bfloat16_e4m3", "sm90"), "multiple of 64"),
        (KernelSpec(8, 8, 128, 11, 256, "bfloat16_e4m3", "interpreter"), "interpreter"),
    ],
)
def test_unsupported_says_why(spec, reason):
    why = registry.get(STEM).unsupported(spec)
    assert why is not None and reason in why
    # the weight-only Triton-language forward takes every one of them that has FP8 weights
    if spec.fp8_weights and spec.target != "sm89" and spec.target != "interpreter":
        assert [v.stem for v in registry.usable("fwd", spec, 4096)] == ["flash_mhf_fwd"]


def test_split_reduction_renders_only_where_configured():
    spec = COMPILE_SPECS[0]
    plain = f8.render(spec, f8.Fp8WsConfig())
    assert "_reduce_splits" not in plain and "COUNTERS" not in plain
    split = f8.render(spec, f8.Fp8WsConfig(consumers=1, inter_splits=4))
    assert "J0, TILES = _split_tiles(EXPERTS * TPE)" in split
    assert 'ticket = gl.atomic_add(COUNTERS + counter, 1, sem="acq_rel")' in split
    # zero again for the next launch: a plain store (no release fence waiting for OUT's
    # stores); configs stored before store_reset keep their atomic exchange
    assert "gl.store(COUNTERS + counter, 0)" in split and "atomic_xchg" not in split
    assert "tma.async_copy_shared_to_global(o_desc" not in split
    legacy = f8.render(spec, f8.Fp8WsConfig(consumers=1, inter_splits=4, store_reset=False))
    assert "gl.atomic_xchg(COUNTERS + counter, 0)" in legacy and "gl.store(COUNTERS" not in legacy


def test_pdl_renders_only_where_configured_and_waits_before_the_calls_inputs():
    """With pdl the first consumer asks L2 for its split's first weight tiles, and both
    partitions wait (griddepcontrol.wait) before anything the previous kernel may write:
    the producer before its q loads, the consumer before the routing weights, the
    workspace, the output and the tickets; the consumer signals launch_dependents once its
    loop is done."""
    spec = COMPILE_SPECS[0]
    plain = f8.render(spec, FAMILIES["swapped-16"])
    assert "griddepcontrol" not in plain and "prefetch" not in plain
    source = f8.render(spec, FAMILIES["swapped-pdl"])
    producer = source.split("def _producer(")[1].split("@gluon.jit")[0]
    assert producer.index("_gdc_wait()") < producer.index("q_desc, [t0")
    consumer = source.split("def _consumer(")[1].split("@gluon.jit")[0]
    wait = consumer.index("_gdc_wait()")
    assert consumer.index("_prefetch_split(KP, UP, VTP, CP") < wait
    for later in ("_stage_routing(", "q.load(", "_reduce_splits("):
        assert wait < consumer.index(later), later
    # the signal once the consumer's loop is done, before the reduction
    loop_end = consumer.index("o = warpgroup_mma_wait(num_outstanding=0, deps=(o, ))")
    assert loop_end < consumer.index("_gdc_launch_dependents()") < consumer.index("_reduce_splits(")
    assert "_gdc_launch_dependents()" not in producer
    kernel = source.split("def flash_mhf_fwd_fp8_ws_kernel(")[1]
    assert "KP, UP, VTP, CP, WS, OUT, COUNTERS, stride_ws" in kernel


def test_pdl_takes_the_swapped_schedule_and_its_launch_attribute():
    spec = COMPILE_SPECS[0]
    problems = f8.config_problems(spec, f8.Fp8WsConfig(consumers=1, inter_splits=8, pdl=True))
    assert any("pdl" in p and "swap_ab" in p for p in problems)
    assert f8.config_problems(spec, FAMILIES["swapped-pdl"]) == []
    assert f8.launch_options(FAMILIES["swapped-pdl"])["launch_pdl"] is True
    assert "launch_pdl" not in f8.launch_options(FAMILIES["swapped-16"])
    assert FAMILIES["swapped-pdl"].describe().endswith(" pdl")  # the bound: the default
    # configs stored before the field read as without it
    assert f8.Fp8WsConfig.added_fields["pdl"] is False


def test_pdl_compiles_with_its_waits_prefetches_and_launch_attribute():
    spec = COMPILE_SPECS[0]
    report = gluon_report(f8, spec, FAMILIES["swapped-pdl"])
    plain = gluon_report(f8, spec, FAMILIES["swapped-16"])
    assert report.launch_pdl and not plain.launch_pdl
    # one wait in the producer and one in the consumer, the consumer's signal, the
    # prefetch's loops
    assert report.pdl_waits == 2 and report.pdl_launches == 1
    assert report.l2_prefetches > 0 and plain.l2_prefetches == plain.pdl_waits == 0
    assert report.spill_bytes == 0 and report.wgmma_serialized == ""
    assert report.wgmma == plain.wgmma


def test_the_pdl_launch_passes_the_weights_pointers_before_the_scalars(monkeypatch):
    from mhfgen import device

    monkeypatch.setattr(device, "target", lambda _: "sm90")
    forget_transposed()
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("dec", 1, 3, 8, 8, 64, 4, 128))
    config = f8.Fp8WsConfig(
        consumers=1, inter_splits=3, staged_scales=True, swap_ab=16, reduce_unroll=4, pdl=True
    )
    plan = f8._launch.make_plan(q, k8, u8, v8, r, scales, config)
    args = f8.arguments(plan, q, k8, u8, v8, r, scales, torch.empty_like(q))
    names = list(plan.kernel.arg_names)
    at = names.index("KP")
    assert names[at - 3 : at + 5] == ["R", "cols_desc", "BOUNDS", "KP", "UP", "VTP", "CP", "WS"]
    pointers = [a.data_ptr() for a in args[at : at + 4]]
    want = (k8, u8, transposed_v(v8), kept_column_factors(scales))
    assert pointers == [t.data_ptr() for t in want]
    options = set(f8.launch_options(config))
    assert list(names[len(args) :]) == [n for n in plan.meta if n not in options]


def test_staged_scales_leave_the_loop_without_global_loads():
    """With staged_scales the column factors come by TMA on the K/U barrier (its byte
    count grown to match) and the routing weights from shared memory: the consumer's loop
    loads nothing from global memory, whose loads the shared-memory fence before O's
    product would wait for."""
    spec = COMPILE_SPECS[0]
    plain = f8.render(spec, f8.Fp8WsConfig())
    staged = f8.render(spec, f8.Fp8WsConfig(staged_scales=True))
    assert "_tile_scales(COLS" in plain and "cols_desc" not in plain
    assert "_tile_scales" not in staged and "COLS" not in staged
    assert "mbarrier.expect(ku_ready.index(s), 2 * W_BYTES + cols_desc.block_type.nbytes)" in staged
    assert "tma.async_copy_global_to_shared(cols_desc, [0, row], ku_ready.index(s)" in staged
    assert "EXPERTS_P2 = gl.constexpr(32)" in staged  # 22 experts
    loop = staged.split("    for j in range(TILES):")[2].split("    o = warpgroup_mma_wait")[0]
    assert "gl.load(" not in loop and "r_s.index(j // TPE).load(rows_s)" in loop
    split = f8.render(spec, f8.Fp8WsConfig(consumers=1, inter_splits=8, staged_scales=True))
    assert "r_s.index((J0 + j) // TPE).load(rows_s)" in split


def test_the_staged_launch_passes_the_column_factors_by_descriptor(monkeypatch):
    from mhfgen import device

    monkeypatch.setattr(device, "target", lambda _: "sm90")
    forget_transposed()
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("dec", 1, 3, 8, 8, 64, 4, 128))
    config = f8.Fp8WsConfig(consumers=1, inter_splits=3, staged_scales=True)
    plan = f8._launch.make_plan(q, k8, u8, v8, r, scales, config)
    args = f8.arguments(plan, q, k8, u8, v8, r, scales, torch.empty_like(q))
    names = plan.kernel.arg_names
    assert list(names[5:9]) == ["R", "cols_desc", "BOUNDS", "WS"] and args[5] is r
    cols = args[6]
    assert cols.base.shape == (2, 8 * 4 * 128) and cols.block_shape == [2, 64]
    assert cols.base.data_ptr() == kept_column_factors(scales).data_ptr()
    options = set(f8.launch_options(config))
    assert list(names[len(args) :]) == [n for n in plan.meta if n not in options]
    with pytest.raises(ValueError, match="6 descriptor layouts for 5 tensors"):
        f8.descriptors(plan.layouts, *(a.base for a in args[:5]))


@pytest.mark.parametrize(
    "tiles, asked, made",
    [
        (88, 8, 8),  # 1.3B: 11 tiles each
        (44, 16, 15),  # ceil(44 / 16) = 3: 15 splits, the last 2 tiles
        (45, 20, 15),  # 16-20 splits of ceil(45 / S) = 3 tiles would leave the last empty
        (3, 8, 3),
        (5, 1, 1),
    ],
)
def test_split_count_leaves_no_split_empty(tiles, asked, made):
    spec = KernelSpec(4, 4, 64, 1, 64 * tiles, "bfloat16_e4m3", "sm90")
    config = f8.Fp8WsConfig(consumers=1, inter_splits=asked)
    splits = f8.split_count(spec, config)
    assert splits == made
    per = -(-tiles // splits)  # the kernel's _split_tiles
    counts = [min(per, tiles - s * per) for s in range(splits)]
    assert sum(counts) == tiles and min(counts) >= 1


def test_decode_default_splits_the_weight_tiles_over_one_wave():
    cfg = f8.default_config(SM90_FP8, 1, 132)  # one consumer, operands swapped
    assert (cfg.consumers, cfg.group_heads, cfg.inter_splits) == (1, 1, 8)
    assert (cfg.swap_ab, cfg.block_n, cfg.stages) == (16, 128, 4)
    assert cfg.staged_scales  # split configs stage the loop's scales
    assert cfg.pdl  # the swapped decode launches with programmatic dependent launch
    assert f8.work_tiles(SM90_FP8, cfg, 1) * cfg.inter_splits <= 132
    gqa = KernelSpec(16, 4, 64, 11, 256, "bfloat16_e4m3", "sm90")
    cfg = f8.default_config(gqa, 64, 132)  # 16 heads x 4 blocks of 16 tokens, 2 splits
    assert (cfg.swap_ab, cfg.consumers, cfg.inter_splits) == (16, 1, 2)
    assert f8.work_tiles(gqa, cfg, 64) == 64
    odd = KernelSpec(16, 4, 64, 11, 192, "bfloat16_e4m3", "sm90")
    assert f8.default_config(odd, 8, 132).block_n == 64  # 128 does not divide 192
    cfg = f8.default_config(gqa, 65, 132)  # past SWAP_TOKENS: unswapped, 128-token tiles
    assert (cfg.swap_ab, cfg.consumers, cfg.inter_splits, cfg.pdl) == (0, 2, 8, False)
    cfg = f8.default_config(SM90_FP8, 100, 132)  # 16 work tiles of 128 tokens: still split
    assert (cfg.consumers, cfg.inter_splits) == (2, 8)
    assert f8.default_config(SM90_FP8, 16384, 132) == f8.Fp8WsConfig()  # prefill unchanged
    assert f8.default_config(SM90_FP8, 1, 0) == f8.Fp8WsConfig(consumers=1)  # SMs unknown
    assert not f8.default_config(SM90_FP8, 16384, 132).staged_scales
    for spec, tokens in ((SM90_FP8, 1), (gqa, 64), (odd, 8), (SM90_FP8, 100), (SM90_FP8, 16384)):
        cfg = f8.default_config(spec, tokens, 132)
        assert f8.config_problems(spec, cfg) == []
        assert f8.call_problems(spec, cfg, tokens, 132) == []


def test_call_problems_refuse_splits_past_the_tiles_or_the_programs():
    spec = KernelSpec(4, 4, 64, 1, 256, "bfloat16_e4m3", "sm90")  # 4 tiles
    assert (
        "exceeds" in f8.call_problems(spec, f8.Fp8WsConfig(consumers=1, inter_splits=8), 1, 132)[0]
    )
    big = KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90")
    assert "programs" in f8.call_problems(big, f8.Fp8WsConfig(inter_splits=32), 16384, 132)[0]
    assert f8.call_problems(big, f8.Fp8WsConfig(), 16384, 132) == []
    # a prefill config at decode would leave most SMs idle
    assert "idle" in f8.call_problems(big, f8.Fp8WsConfig(), 1, 132)[0]
    assert f8.call_problems(big, f8.Fp8WsConfig(), 1, 1) == []  # the interpreter: one "SM"


def test_the_split_launch_passes_workspace_output_and_counters(monkeypatch):
    from mhfgen import device

    monkeypatch.setattr(device, "target", lambda _: "sm90")
    forget_transposed()
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("dec", 1, 3, 8, 8, 64, 4, 128))
    config = f8.Fp8WsConfig(consumers=1, inter_splits=3, act_scale="running")
    plan = f8._launch.make_plan(q, k8, u8, v8, r, scales, config)
    assert plan.grid == (8, 3)  # 8 heads x 1 token block; 8 weight tiles: 3 + 3 + 2
    o = torch.empty_like(q)
    args = f8.arguments(plan, q, k8, u8, v8, r, scales, o)
    names = plan.kernel.arg_names
    assert list(names[5:11]) == ["R", "COLS", "WS", "OUT", "COUNTERS", "stride_ws"]
    work, out, counters = args[7:10]
    assert work.shape == (3, 3, 8 * 64) and work.dtype == torch.float32  # one per split
    assert out is o and counters.dtype == torch.int32 and counters.numel() >= 8
    assert args[10:] == (3 * 8 * 64, *r.stride(), 3, 3)
    options = set(f8.launch_options(config))
    assert list(names[len(args) :]) == [n for n in plan.meta if n not in options]


def test_takes_decode_sizes_first_unless_activations_stay_16_bit(monkeypatch):
    monkeypatch.delenv(registry.FP8_ACTIVATIONS_ENV, raising=False)
    for tokens in (1, 8, 64, 16384):
        assert f8.unsupported(SM90_FP8, tokens=tokens) is None
        assert [v.stem for v in registry.usable("fwd", SM90_FP8, tokens)] == [
            STEM,
            "flash_mhf_fwd",
        ]
    monkeypatch.setenv(registry.FP8_ACTIVATIONS_ENV, "0")
    assert [v.stem for v in registry.usable("fwd", SM90_FP8, 1)] == ["flash_mhf_fwd"]


def test_emulated_splits_follow_the_launch():
    spec = KernelSpec(8, 8, 64, 4, 128, "bfloat16_e4m3", "sm90")  # 8 weight tiles
    assert f8.emulated_splits(spec, f8.Fp8WsConfig()) == 1
    assert f8.emulated_splits(spec, f8.Fp8WsConfig(consumers=1, inter_splits=3)) == 3
    assert f8.emulated_splits(spec, f8.Fp8WsConfig(inter_splits=7)) == 4  # 2 tiles each


def test_ranks_first_for_the_fp8_weight_dtypes(fresh_dispatch, monkeypatch):
    monkeypatch.delenv(registry.FP8_ACTIVATIONS_ENV, raising=False)
    variant = registry.get(STEM)
    assert (variant.op, variant.family, variant.quantises_activations) == ("fwd", "gluon", True)
    assert variant.launch_fn() is f8.flash_mhf_fwd_fp8_ws
    for dtype in ("bfloat16_e4m3", "float16_e4m3"):
        spec = dataclasses.replace(SM90_FP8, dtype=dtype)
        assert [v.stem for v in registry.usable("fwd", spec, 16384)] == [STEM, "flash_mhf_fwd"]
        choice = dispatch.explain_choice("fwd", spec, 16384, CPU)
        assert (choice.variant, choice.source) == (STEM, "heuristic")
        assert choice.config == f8.default_config(spec, 16384)
    # the 16-bit dtypes never see it
    bf16 = dataclasses.replace(SM90_FP8, dtype="bfloat16")
    assert STEM not in [v.stem for v in registry.usable("fwd", bf16, 16384)]
    assert registry.get("flash_mhf_fwd_ws").quantises_activations is False


@pytest.mark.parametrize("value", ["0", "false", "off", " No "])
def test_env_opt_out_leaves_fp8_layers_weight_only(value, fresh_dispatch, monkeypatch):
    monkeypatch.setenv(registry.FP8_ACTIVATIONS_ENV, value)
    assert not registry.fp8_activations_enabled()
    assert [v.stem for v in registry.usable("fwd", SM90_FP8, 16384)] == ["flash_mhf_fwd"]
    assert dispatch.explain_choice("fwd", SM90_FP8, 16384, CPU).variant == "flash_mhf_fwd"
    # the tuner's units come from usable() too: nothing of the variant is searched
    from mhfgen.tuning.search import tuning_units

    assert tuning_units(["fwd"], SM90_FP8, 16384) == ["flash_mhf_fwd"]


@pytest.mark.parametrize("value", [None, "", "1", "yes", "maybe"])
def test_env_default_and_unknown_words_keep_it(value, fresh_dispatch, monkeypatch):
    env.forget_warnings()
    if value is None:
        monkeypatch.delenv(registry.FP8_ACTIVATIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(registry.FP8_ACTIVATIONS_ENV, value)
    assert registry.fp8_activations_enabled()
    assert registry.usable("fwd", SM90_FP8, 16384)[0].stem == STEM
    env.forget_warnings()


def test_env_variable_is_documented():
    readme = (ROOT / "README.md").read_text()
    serving = (ROOT / "docs" / "SERVING.md").read_text()
    assert "MHFGEN_FP8_ACTIVATIONS" in readme and "MHFGEN_FP8_ACTIVATIONS" in serving
    assert "MHFGEN_FP8_ACTIVATIONS" in (ROOT / "mhfgen" / "env.py").read_text()


# ---------------------------------------------------------------------------------------
# the FP8-activation bar
# ---------------------------------------------------------------------------------------


def test_tolerance_for_gives_the_fp8_activation_bar_to_that_variant_only():
    fp8 = registry.get(STEM)
    weight_only = registry.get("flash_mhf_fwd")
    assert tolerance_for(fp8, "bfloat16_e4m3") == FP8_ACTIVATIONS_BAR == 6e-2
    assert tolerance_for(weight_only, "bfloat16_e4m3") == tolerance("bfloat16_e4m3") == 2.5e-3
    assert tolerance_for(None, "float16_e4m3") == tolerance("float16")
    # the small-tensor allowance applies to it as to every bar; gradients are not its
    assert tolerance_for(fp8, "bfloat16_e4m3", numel=384) == pytest.approx(
        6e-2 * (1 + 2 / 768**0.5)
    )
    assert tolerance_for(fp8, "bfloat16_e4m3", grad=True) == tolerance("bfloat16", grad=True)


def test_every_candidate_check_goes_through_tolerance_for():
    """tolerance() itself is called only where no kernel is being checked: its own module
    and verify's summary line of the dtypes' bars."""
    allowed = {"tolerances.py", "cli/verify.py"}
    offenders = []
    for path in sorted((ROOT / "mhfgen").rglob("*.py")):
        rel = path.relative_to(ROOT / "mhfgen").as_posix()
        if rel in allowed:
            continue
        if re.search(r"(?<![\w.])(?<!def )tolerance\(", path.read_text()):
            offenders.append(rel)
    assert offenders == []
    verify = (ROOT / "mhfgen" / "cli" / "verify.py").read_text()
    assert verify.count("tolerance(") == 2  # the summary line's output and gradient bars


def _noisy(ref: torch.Tensor, error: float) -> torch.Tensor:
    noise = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return ref + noise * (error * ref.norm() / noise.norm())


def test_verify_and_the_matrix_hold_the_variant_to_its_bar():
    from mhfgen import verify_matrix

    ref = torch.randn(2, 64, 4, 64, dtype=torch.float64)
    got = {"o": _noisy(ref, 0.04)}
    (check,) = compare(got, {"o": ref}, "bfloat16_e4m3", ("o",), variant=registry.get(STEM))
    assert check.ok and check.tolerance == pytest.approx(FP8_ACTIVATIONS_BAR, rel=2e-2)
    (check,) = compare(got, {"o": ref}, "bfloat16_e4m3", ("o",))
    assert not check.ok

    class Fake:  # a forward variant as check_variant forces it
        takes_grad = False
        outputs = ("o",)

        def __init__(self, quantises):
            self.quantises_activations = quantises

        def launch(self, *tensors):
            assert len(tensors) == 6  # the FP8-weight forward's arguments
            return got["o"]

    inputs = (ref,) * 6
    fp8 = (ref,) * 6
    status, _, tols = verify_matrix.check_variant(
        Fake(True), inputs, {"o": ref}, torch.bfloat16, fp8
    )
    assert status == "ok" and tols["o"] == pytest.approx(FP8_ACTIVATIONS_BAR, rel=2e-2)
    status, _, _ = verify_matrix.check_variant(Fake(False), inputs, {"o": ref}, torch.bfloat16, fp8)
    assert status.startswith("FAIL")


def test_the_tuner_checks_candidates_against_the_variants_bar():
    source = (ROOT / "mhfgen" / "tuning" / "workload.py").read_text()
    assert "tolerance_for(variant, self.problem.spec.dtype" in source


# ---------------------------------------------------------------------------------------
# the launch, on the CPU
# ---------------------------------------------------------------------------------------


def _fp8_case(case: Case, dtype=torch.float16, device="cpu"):
    q, k, u, v, r, do = make_inputs(case, dtype, device)
    (q, k8, u8, v8, r, scales), dense = fp8_inputs(q, k, u, v, r, do)
    return (q, k8, u8, v8, r, scales), dense


def test_the_launch_passes_every_kernel_argument_in_order(monkeypatch):
    """On the CPU (the plan made as for an sm90 device), the launch's positional arguments
    and constexprs are exactly the generated kernel's parameters, in order: the
    descriptors of q, k8, u8, V8^T and o, r, the scales' column factors, then the
    scalars."""
    from mhfgen import device

    monkeypatch.setattr(device, "target", lambda _: "sm90")
    forget_transposed()
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("gqa", 2, 100, 8, 2, 128, 4, 128))
    config = f8.Fp8WsConfig(act_scale="running")  # no expert bounds (the next test's)
    plan = f8._launch.make_plan(q, k8, u8, v8, r, scales, config)
    assert plan.spec.dtype == "float16_e4m3"
    o = torch.empty_like(q)
    args = f8.arguments(plan, q, k8, u8, v8, r, scales, o)
    names = plan.kernel.arg_names
    assert list(names[:5]) == ["q_desc", "k_desc", "u_desc", "vt_desc", "o_desc"]
    vt = transposed_v(v8)
    bases = [d.base.data_ptr() for d in args[:5]]
    assert bases == [t.data_ptr() for t in (q, k8, u8, vt, o)]
    assert args[3].base.shape == (2 * 4 * 128, 128)  # (Hkv * E * D, De)
    assert [d.block_shape for d in args[:5]] == [
        [64, 128],
        [64, 128],
        [64, 128],
        [128, 64],
        [64, 128],
    ]
    assert names[5:7] == ["R", "COLS"] and args[5] is r
    assert args[6] is kept_column_factors(scales)
    assert torch.equal(args[6], torch.stack((scales[0], scales[1] * scales[2])))
    options = set(f8.launch_options(config))
    assert list(names[len(args) :]) == [n for n in plan.meta if n not in options]
    assert args[7:] == (*r.stride(), 100, 200)
    assert plan.grid == (f8.work_tiles(plan.spec, config, 200),)


def test_the_launcher_refuses_16_bit_weights_and_missing_scales():
    q, k, u, v, r, _ = make_inputs(Case("t", 1, 80, 4, 4, 64, 2, 64), torch.float16, "cpu")
    with pytest.raises(TypeError):
        f8.flash_mhf_fwd_fp8_ws(q, k, u, v, r)
    k8, u8, v8, scales = quantize_experts(k, u, v)
    with pytest.raises(TypeError, match="scales"):
        f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r)


def test_column_factors_fold_g_and_v_scales_and_are_kept_per_version():
    scales = torch.rand(3, 2, 3, 64) + 0.5
    cols = column_factors(scales)
    assert cols.shape == (2, 2, 3, 64) and cols.is_contiguous() and cols.dtype == torch.float32
    assert torch.equal(cols[0], scales[0]) and torch.equal(cols[1], scales[1] * scales[2])
    forget_transposed()
    first = kept_column_factors(scales)
    assert kept_column_factors(scales) is first
    scales[1].mul_(2.0)  # a write bumps the version: made anew, with the new scales
    assert torch.equal(kept_column_factors(scales)[1], scales[1] * scales[2])
    with pytest.raises(ValueError, match="scales"):
        column_factors(scales[:2])


def test_derived_operands_made_under_graph_capture_are_not_kept(monkeypatch):
    """Under CUDA graph capture a derived operand kept before is used as it is, and one
    not kept yet is made (its kernels go into the graph) but not kept: its values exist
    only once the graph replays, so a call outside the graph must make its own."""
    from mhfgen import fp8

    scales = torch.rand(3, 2, 3, 64) + 0.5
    forget_transposed()
    before = kept_column_factors(scales)
    monkeypatch.setattr(fp8, "_capturing", lambda source: True)
    assert kept_column_factors(scales) is before  # kept outside the capture: reused
    v8 = quantize_experts(*(torch.randn(2, 3, 64, 32) for _ in range(3)))[2]
    inside = transposed_v(v8)
    assert torch.equal(inside, transpose_v(v8))
    assert transposed_v(v8) is not inside  # made again: nothing kept under capture
    monkeypatch.setattr(fp8, "_capturing", lambda source: False)
    kept = transposed_v(v8)
    assert kept is not inside and transposed_v(v8) is kept


def test_transposed_v_is_made_once_per_tensor_and_version():
    forget_transposed()
    v8 = torch.randn(2, 3, 64, 16).to(torch.float8_e4m3fn)
    first = transposed_v(v8)
    assert first.shape == (2, 3, 16, 64) and first.is_contiguous()
    assert torch.equal(first.float(), v8.float().transpose(-1, -2))
    assert transposed_v(v8) is first
    other = v8.clone()  # the same values in another tensor: its own copy
    assert transposed_v(other) is not first
    v8[0, 0, 0, 0] = 1.0  # an in-place write bumps the version: made anew
    again = transposed_v(v8)
    assert again is not first and torch.equal(again.float(), transpose_v(v8).float())
    forget_transposed()
    assert transposed_v(v8) is not again
    with torch.inference_mode():  # no version counter to key on: never kept
        frozen = torch.randn(2, 3, 64, 16).to(torch.float8_e4m3fn)
        assert transposed_v(frozen) is not transposed_v(frozen)
    assert torch.equal(transposed_v(frozen).float(), frozen.float().transpose(-1, -2))


# ---------------------------------------------------------------------------------------
# the float64 emulation of the arithmetic
# ---------------------------------------------------------------------------------------


def test_emulation_of_splits_sums_partials_with_their_own_maxima():
    (q, k8, u8, v8, r, scales), dense = _fp8_case(Case("x", 1, 48, 4, 2, 64, 3, 128))
    want = flash_mhf(q.double(), *(w.double() for w in dense[1:4]), r.double())
    whole = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64)
    assert torch.equal(flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, 1), whole)
    for splits in (2, 3, 6):
        got = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, splits)
        assert not torch.equal(got, whole)  # each partial quantises on its own maximum
        assert relative_error(got, want) < FP8_ACTIVATIONS_BAR
    # 4 asked of 6 tiles: ceil(6 / 4) = 2 tiles each, 3 splits, as the kernel deals them
    three = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, 3)
    assert torch.equal(flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, 4), three)


@pytest.mark.parametrize("head_dim", [64, 96, 128])
def test_emulation_error_is_in_the_fp8_band(head_dim):
    """On make_inputs' data the W8A8 scheme lands 3e-2 to 6e-2 from float64 on the
    dequantised weights (e4m3: ~3.6% rms per rounding), under the bar."""
    (q, k8, u8, v8, r, scales), dense = _fp8_case(Case("x", 1, 192, 4, 2, head_dim, 3, 128))
    want = flash_mhf(q.double(), *(w.double() for w in dense[1:4]), r.double())
    err = relative_error(flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64), want)
    assert 3e-2 < err < FP8_ACTIVATIONS_BAR


def test_emulation_folds_v_scales_into_the_activations_exactly():
    """Doubling V's row scales doubles p', its running max and the output scale, leaving
    every e4m3 value as it was: the output doubles exactly."""
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("x", 1, 64, 4, 2, 64, 2, 128))
    once = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64)
    doubled = scales.clone()
    doubled[2] *= 2
    assert torch.equal(flash_mhf_w8a8(q, k8, u8, v8, r, doubled, 64), 2 * once)
    # but not the K scales (silu is not linear)
    doubled = scales.clone()
    doubled[0] *= 2
    assert not torch.equal(flash_mhf_w8a8(q, k8, u8, v8, r, doubled, 64), 2 * once)


def _one_tile_form(q, k8, u8, v8, r, scales):
    """The scheme with the whole intermediate as one tile, its row max the global one,
    written out directly (E = 1)."""
    top = 448.0
    q64 = q.double()
    amax = q64.abs().amax(-1, keepdim=True)
    q8 = (q64 * torch.where(amax > 0, top / amax, 0.0)).to(torch.float8_e4m3fn).double()
    s = torch.einsum("blhd,hnd->blhn", q8, k8[:, 0].double()) * (amax / top) * scales[0, :, 0]
    g = torch.einsum("blhd,hnd->blhn", q8, u8[:, 0].double()) * (amax / top) * scales[1, :, 0]
    act = torch.nn.functional.silu(s) * g * r.double() * scales[2, :, 0]
    m = act.abs().amax(-1, keepdim=True)
    p8 = (act * torch.where(m > 0, top / m, 0.0)).to(torch.float8_e4m3fn).double()
    return torch.einsum("blhn,hnd->blhd", p8, v8[:, 0].double()) * (m / top)


def test_emulation_running_max_is_the_global_max_where_tile_0_holds_it():
    """With every row's largest |p'| in the first weight tile (V's scales of that tile made
    large), the running max never grows after it: four tiles give what one tile of the
    whole intermediate gives, up to float64 summation order. Anywhere else the running
    max grows and the early tiles were quantised on smaller scales (a different
    result)."""
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("x", 1, 48, 2, 2, 64, 1, 256))
    big = scales.clone()
    big[2, :, :, :64] *= 1e4
    one = _one_tile_form(q, k8, u8, v8, r, big)
    assert torch.allclose(flash_mhf_w8a8(q, k8, u8, v8, r, big, 256), one, rtol=1e-12, atol=0)
    assert torch.allclose(flash_mhf_w8a8(q, k8, u8, v8, r, big, 64), one, rtol=1e-12, atol=0)
    late = scales.clone()
    late[2, :, :, 192:] *= 1e4
    assert not torch.allclose(
        flash_mhf_w8a8(q, k8, u8, v8, r, late, 64), _one_tile_form(q, k8, u8, v8, r, late)
    )


def _activations(q, k8, u8, v8, r, scales):
    """Every p' = silu(S) G r v_scale of the scheme (q quantised as the kernel does), in
    float64: (B, L, H, E, De), and each row's bound M (flash_mhf_w8a8's act_scale='bound',
    before the power of two) as (B, L, H, 1, 1)."""
    top = 448.0
    group = q.shape[2] // k8.shape[0]
    q64 = q.double()
    amax = q64.abs().amax(-1, keepdim=True)
    q8 = (q64 * torch.where(amax > 0, top / amax, 0.0)).to(torch.float8_e4m3fn).double()
    qd = q8 * (amax / top)
    k, u = (
        (w.double() * s.double()[..., None]).repeat_interleave(group, 0)
        for w, s in ((k8, scales[0]), (u8, scales[1]))
    )
    vs = scales[2].double().repeat_interleave(group, 0)
    s = torch.einsum("blhd,hend->blhen", qd, k)
    g = torch.einsum("blhd,hend->blhen", qd, u)
    act = torch.nn.functional.silu(s) * g * r.double()[..., None] * vs
    c = expert_bounds(k8, u8, scales).double().repeat_interleave(group, 0)
    bound = (qd * qd).sum(-1)[..., None] * (r.double().abs() * c).amax(-1, keepdim=True)
    return act, bound[..., None]


def test_expert_bounds_bound_every_activation_even_of_aligned_rows():
    """|p'| <= |q~|^2 max_e |r_e| c_e for every activation, also where q is one of K's
    rows (Cauchy-Schwarz with equality in S), so act_scale='bound' never saturates an
    e4m3 value; and it is within a small factor of the largest |p'| there."""
    (q, k8, u8, v8, r, scales), dense = _fp8_case(Case("x", 1, 40, 4, 2, 64, 3, 128))
    q = q.clone()
    q[0, :8, 0] = (dense[1][0, 1, 7] * 5).to(q.dtype)  # aligned with a row of K
    act, bound = _activations(q, k8, u8, v8, r, scales)
    assert (act.abs() <= bound * (1 + 1e-12)).all()
    worst = act.abs().amax((-1, -2), keepdim=True) / bound
    assert worst[0, :8, 0].min() > 1 / 64  # tight-ish where q lines up with the weights


def test_expert_bounds_are_the_largest_row_norm_products_and_kept_per_version():
    (_, k8, u8, v8, _, scales), _ = _fp8_case(Case("x", 1, 4, 2, 2, 64, 3, 128))
    c = expert_bounds(k8, u8, scales)
    assert c.shape == (2, 3) and c.dtype == torch.float32 and c.is_contiguous()
    rows = (
        (k8.float() * scales[0][..., None]).norm(dim=-1)
        * (u8.float() * scales[1][..., None]).norm(dim=-1)
        * scales[2]
    )
    assert torch.allclose(c, rows.amax(-1))
    forget_transposed()
    first = kept_expert_bounds(k8, u8, scales)
    assert kept_expert_bounds(k8, u8, scales) is first
    assert kept_expert_bounds(k8, u8.clone(), scales) is not first  # another U tensor
    scales[2].mul_(2.0)  # a write to any of the three: made anew
    assert torch.allclose(kept_expert_bounds(k8, u8, scales), 2 * c)
    with pytest.raises(ValueError, match="scales"):
        expert_bounds(k8, u8, scales[:2])


def test_emulation_with_a_fixed_bound_is_one_scale_for_all_splits():
    """act_scale='bound': every tile and split quantises on the row's one power-of-two
    scale, so the partials sum to the unsplit result (up to float64 summation order), and
    the error stays in the FP8 band."""
    (q, k8, u8, v8, r, scales), dense = _fp8_case(Case("x", 1, 48, 4, 2, 64, 3, 128))
    want = flash_mhf(q.double(), *(w.double() for w in dense[1:4]), r.double())
    whole = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, 1, "bound")
    for splits in (2, 3, 6):
        got = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, splits, "bound")
        assert torch.allclose(got, whole, rtol=1e-12, atol=1e-15)
    assert 3e-2 < relative_error(whole, want) < FP8_ACTIVATIONS_BAR
    assert not torch.equal(whole, flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64))
    with pytest.raises(ValueError, match="act_scale"):
        flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64, 1, "max")


def test_the_bound_launch_passes_the_expert_bounds_after_the_column_factors(monkeypatch):
    from mhfgen import device

    monkeypatch.setattr(device, "target", lambda _: "sm90")
    forget_transposed()
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("gqa", 2, 100, 8, 2, 128, 4, 128))
    config = f8.Fp8WsConfig(act_scale="bound")
    plan = f8._launch.make_plan(q, k8, u8, v8, r, scales, config)
    args = f8.arguments(plan, q, k8, u8, v8, r, scales, torch.empty_like(q))
    names = plan.kernel.arg_names
    assert names[5:8] == ["R", "COLS", "BOUNDS"]
    assert args[7] is kept_expert_bounds(k8, u8, scales)
    options = set(f8.launch_options(config))
    assert list(names[len(args) :]) == [n for n in plan.meta if n not in options]


def test_emulation_zero_rows_give_zero():
    (q, k8, u8, v8, r, scales), _ = _fp8_case(Case("x", 1, 16, 2, 2, 64, 2, 64))
    q = q.clone()
    q[0, 3] = 0  # a token whose q is zero
    r = r.clone()
    r[0, 5] = 0  # a token routed nowhere
    o = flash_mhf_w8a8(q, k8, u8, v8, r, scales, 64)
    assert torch.isfinite(o).all()
    assert torch.equal(o[0, 3], torch.zeros_like(o[0, 3]))
    assert torch.equal(o[0, 5], torch.zeros_like(o[0, 5]))
    with pytest.raises(ValueError, match="block_n"):
        flash_mhf_w8a8(q, k8, u8, v8, r, scales, 48)


# ---------------------------------------------------------------------------------------
# on a GPU (Hopper): the kernel against the emulation and against float64
# ---------------------------------------------------------------------------------------

GPU_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)

SPEC_FIELDS = ("heads", "kv_heads", "head_dim", "experts", "expert_dim")
GPU_CASES = [
    Case("1.3B_slice", 1, 1000, 16, 16, 128, 22, 256),
    Case("d64", 2, 512, 8, 8, 64, 8, 128),
    Case("gqa", 1, 700, 16, 4, 128, 11, 256),
    Case("tokens_1037", 1, 1037, 4, 4, 64, 4, 192),
    Case("e1", 1, 300, 8, 8, 128, 1, 512),
    # decode: the weight tiles split over programs (one query head each, or two of a kv group)
    Case("decode_1", 1, 1, 16, 16, 128, 22, 256),
    Case("decode_37_gqa", 1, 37, 16, 4, 64, 11, 256),
    Case("decode_64_e1", 2, 32, 8, 8, 128, 1, 512),
]


def _assert_matches_emulation_and_float64(got, spec, config, fp8_args, dense):
    """`got`, the kernel's output on fp8_args (q, k8, u8, v8, r, scales) with `config`,
    is within FP8_EMULATION_BAR of the emulation of its tiles and splits (whole tensor
    only: its doc) and within the variant's bar of float64 on the dequantised weights
    `dense`, per row too; returns that float64 output."""
    q, k8, u8, v8, r, scales = fp8_args
    emulated = f8.emulate(q, k8, u8, v8, r, scales, spec, config)
    assert relative_error(got, emulated) <= FP8_EMULATION_BAR
    want = flash_mhf(q.double(), *(w.double() for w in dense[1:4]), r.double())
    bar = tolerance_for(registry.get(STEM), q.dtype, numel=want.numel())
    assert relative_error(got, want) <= bar
    assert row_error(got, want) <= ROW_FACTOR * bar
    return want


@pytest.mark.skipif(not GPU_SM90, reason="needs an sm90 (Hopper) CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_kernel_matches_the_emulation_on_a_gpu(case, dtype):
    (q, k8, u8, v8, r, scales), dense = _fp8_case(case, dtype, "cuda")
    name = f"{str(dtype).removeprefix('torch.')}_e4m3"
    spec = KernelSpec(*(getattr(case, f) for f in SPEC_FIELDS), name, "sm90")
    config = f8.default_config(
        spec, case.tokens, torch.cuda.get_device_properties(0).multi_processor_count
    )
    got = f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config)
    torch.cuda.synchronize()
    assert got.dtype == dtype and got.shape == q.shape
    want = _assert_matches_emulation_and_float64(
        got, spec, config, (q, k8, u8, v8, r, scales), dense
    )
    # and through the op: the variant dispatch picks (this one unless a tuned winner of the
    # weight-only forward comes first) to its own bar
    import mhfgen

    with torch.no_grad():
        via_op = mhfgen.flash_mhf_fp8(q, k8, u8, v8, r, scales)
    choice = dispatch.explain_choice("fwd", spec, case.tokens, q.device)
    if choice.variant == STEM:
        emulated = f8.emulate(q, k8, u8, v8, r, scales, spec, choice.config)
        assert relative_error(via_op, emulated) <= FP8_EMULATION_BAR
    bar = tolerance_for(registry.get(choice.variant), q.dtype, numel=want.numel())
    assert relative_error(via_op, want) <= bar


SWAPPED_CASES = [c for c in GPU_CASES if c.name.startswith("decode")]


@pytest.mark.skipif(not GPU_SM90, reason="needs an sm90 (Hopper) CUDA GPU")
@pytest.mark.parametrize("schedule", ["unswapped", "swapped", "early-o", "early-o-2-tiles"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_a_fixed_bound_matches_the_emulation_on_a_gpu(case, dtype, schedule):
    """act_scale='bound' (the activations scaled by each row's power-of-two bound, no
    running maximum): the heuristic's unswapped config with it, with two activation
    buffers (p_buffers 2: O's product before the scores' wait; one or two tiles per
    iteration), and at decode sizes the swapped schedule with it, against the emulation
    of its tiles and splits and float64."""
    swapped = schedule == "swapped"
    if swapped and case not in SWAPPED_CASES:
        pytest.skip("the swapped schedule is a decode schedule")
    (q, k8, u8, v8, r, scales), dense = _fp8_case(case, dtype, "cuda")
    name = f"{str(dtype).removeprefix('torch.')}_e4m3"
    spec = KernelSpec(*(getattr(case, f) for f in SPEC_FIELDS), name, "sm90")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if swapped:
        config = f8.swapped_decode_config(spec, case.tokens, sms)
    else:
        config = f8.default_config(spec, case.tokens, sms, swapped=False)
    config = dataclasses.replace(config, act_scale="bound")
    if schedule.startswith("early-o"):
        unroll = 2 if schedule.endswith("2-tiles") else 1
        config = dataclasses.replace(config, p_buffers=2, unroll_tiles=unroll)
        if config.inter_splits > 1 and unroll == 2:
            pytest.skip("the split takes one tile per iteration")
    assert not f8.config_problems(spec, config)
    got = f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config)
    torch.cuda.synchronize()
    _assert_matches_emulation_and_float64(got, spec, config, (q, k8, u8, v8, r, scales), dense)


@pytest.mark.skipif(not GPU_SM90, reason="needs an sm90 (Hopper) CUDA GPU")
@pytest.mark.parametrize(
    ("swap", "block_n", "consumers", "reduce_unroll"),
    [(16, 64, 1, 1), (16, 128, 1, 1), (64, 64, 1, 1), (16, 128, 1, 8), (16, 64, 2, 8)],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", SWAPPED_CASES, ids=lambda c: c.name)
def test_swapped_decode_matches_the_emulation_on_a_gpu(
    case, dtype, swap, block_n, consumers, reduce_unroll
):
    """The swapped-operand decode schedule (swap_ab) computes what the emulation of its
    splits does, and float64 within the FP8 bar, with 64- and 128-row weight tiles (64
    tokens a consumer with 128-row tiles needs 320 accumulator registers: refused) and
    with two consumers sharing each tile (two heads of a kv group, or two token blocks), and
    with the split reduction's partial loads issued 8 at a time."""
    (q, k8, u8, v8, r, scales), dense = _fp8_case(case, dtype, "cuda")
    name = f"{str(dtype).removeprefix('torch.')}_e4m3"
    spec = KernelSpec(*(getattr(case, f) for f in SPEC_FIELDS), name, "sm90")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    config = f8.swapped_decode_config(spec, case.tokens, sms, swap, block_n, consumers)
    config = dataclasses.replace(config, reduce_unroll=reduce_unroll)
    assert config.block_n == block_n and not f8.config_problems(spec, config)
    assert config.group_heads == (2 if consumers == 2 and spec.group % 2 == 0 else 1)
    got = f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config)
    torch.cuda.synchronize()
    _assert_matches_emulation_and_float64(got, spec, config, (q, k8, u8, v8, r, scales), dense)


def _pdl_case(case):
    """(the case's FP8 inputs on the GPU in bf16, its spec, the swapped decode heuristic's
    config without pdl, that config with pdl)."""
    fp8_args, _ = _fp8_case(case, torch.bfloat16, "cuda")
    spec = KernelSpec(*(getattr(case, f) for f in SPEC_FIELDS), "bfloat16_e4m3", "sm90")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    plain = f8.swapped_decode_config(spec, case.tokens, sms, pdl=False)
    return fp8_args, spec, plain, dataclasses.replace(plain, pdl=True)


def _assert_replays_give(graph, outs: list, wants: list) -> None:
    """Two replays of `graph` each leave its outputs `outs` bitwise equal to `wants`."""
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(outs, wants):
            assert torch.equal(got, want)


@pytest.mark.skipif(not GPU_SM90, reason="needs an sm90 (Hopper) CUDA GPU")
@pytest.mark.parametrize("case", SWAPPED_CASES, ids=lambda c: c.name)
def test_pdl_gives_the_plain_launchs_outputs_on_a_gpu(case):
    """Programmatic dependent launch changes when a call may start, not what it computes:
    bitwise the outputs of the same config without it, eagerly and in a CUDA graph of
    back-to-back calls whose inputs a kernel between them rewrites."""
    (q, k8, u8, v8, r, scales), spec, plain, config = _pdl_case(case)
    want = f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=plain)
    got = f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config)
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    qs = [q * (1 + i) for i in range(3)]
    wants = [f8.flash_mhf_fwd_fp8_ws(x, k8, u8, v8, r, scales, config=plain) for x in qs]
    x = torch.empty_like(q)
    outs = []
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(3):
            x.copy_(q * (1 + i))  # written by the kernel just before each call
            outs.append(f8.flash_mhf_fwd_fp8_ws(x, k8, u8, v8, r, scales, config=config))
    _assert_replays_give(graph, outs, wants)


@pytest.mark.skipif(not GPU_SM90, reason="needs an sm90 (Hopper) CUDA GPU")
def test_pdl_after_the_router_reads_the_routers_outputs_on_a_gpu():
    """The layer's order: the RMSNorm and router kernel (which signals launch_dependents as
    it starts on sm90, so the call really starts early) writes q and R, then the pdl call
    reads them: bitwise the plain launch's outputs on the router's outputs, in a CUDA graph
    of three such pairs on different inputs, replayed twice."""
    from mhfgen.norm_router import norm_router

    (q, k8, u8, v8, r, scales), spec, plain, config = _pdl_case(SWAPPED_CASES[0])
    H, D, E = spec.heads, spec.head_dim, spec.experts
    norm_w = torch.rand(H, D, device="cuda") + 0.5
    router_w = torch.randn(H, D, E, device="cuda") * 0.1
    xs = [q * (1 + i) for i in range(3)]
    with torch.no_grad():
        wants = []
        for x in xs:
            qn, rr = norm_router(x, norm_w, router_w)
            wants.append(f8.flash_mhf_fwd_fp8_ws(qn, k8, u8, v8, rr, scales, config=plain))
        outs = []
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for x in xs:
                qn, rr = norm_router(x, norm_w, router_w)
                outs.append(f8.flash_mhf_fwd_fp8_ws(qn, k8, u8, v8, rr, scales, config=config))
    _assert_replays_give(graph, outs, wants)


def test_the_gpu_check_script_says_what_it_needs(monkeypatch, capsys):
    """benchmarks/fp8_fwd_check.py runs on an sm90 GPU only: elsewhere it says so and
    exits 2; --help works anywhere."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    script = importlib.import_module("fp8_fwd_check")
    try:
        with pytest.raises(SystemExit) as help_exit:
            script.main(["--help"])
        assert help_exit.value.code == 0
        assert "flash_mhf_fwd_fp8_ws" in capsys.readouterr().out
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert script.main([]) == 2
        assert "sm90" in capsys.readouterr().err
    finally:
        sys.modules.pop("fp8_fwd_check", None)


@pytest.mark.parametrize(
    "tokens, opt_out, pays",
    [(16384, None, False), (16384, "0", False), (64, None, True)],
)
def test_fp8_layers_dequantise_where_the_bf16_gluon_forward_is_faster(
    tokens, opt_out, pays, fresh_dispatch, monkeypatch
):
    """mhfgen.ops.fp8_forward_pays (whether an FP8 layer runs flash_mhf_fp8 or dequantises):
    at prefill sizes on sm90 the 16-bit pick is the bf16 Gluon forward, which takes no FP8
    weights and beat the FP8-arithmetic forward on an H100 (0.83x): the layer dequantises,
    whether or not MHFGEN_FP8_ACTIVATIONS is off. At decode the weight-only forward pays."""
    from mhfgen import device, ops

    monkeypatch.setattr(device, "target", lambda _: "sm90")
    if opt_out is None:
        monkeypatch.delenv(registry.FP8_ACTIVATIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(registry.FP8_ACTIVATIONS_ENV, opt_out)
    ops._fp8_pays.clear()
    q = torch.zeros(1, tokens, 2, 64, dtype=torch.float16)
    k8 = torch.zeros(2, 2, 64, 64, dtype=torch.float8_e4m3fn)
    r = torch.zeros(1, tokens, 2, 2)
    with torch.no_grad():
        assert ops.fp8_forward_pays(q, k8, r) is pays
    ops._fp8_pays.clear()
