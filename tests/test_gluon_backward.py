"""What the Gluon backward kernels share, on the CPU: their support check
(mhfgen.kernels.sm90.backward_unsupported) and place before the Triton-language variant of
their op, and their launch (mhfgen.kernels.sm90.BackwardLaunch), checked against each
generated kernel's parameters."""

import dataclasses
import importlib
import re

import pytest
import torch
from sm90_compile import gluon_report

from mhfgen import registry
from mhfgen.codegen import render
from mhfgen.kernels import configs, sm90
from mhfgen.spec import KernelSpec
from mhfgen.verification import Case, make_inputs

#: (Gluon variant, its op, the Triton-language variant the op falls back to)
VARIANTS = [
    ("flash_mhf_bwd_dkv_ws", "bwd_dkv", "flash_mhf_bwd_dkv"),
    ("flash_mhf_bwd_dkvt_ws", "bwd_dkv", "flash_mhf_bwd_dkv"),
    ("flash_mhf_bwd_dq_ws", "bwd_dq", "flash_mhf_bwd_dq"),
    ("flash_mhf_bwd_ws", "bwd", "flash_mhf_bwd_fused"),
    ("flash_mhf_bwdt_ws", "bwd", "flash_mhf_bwd_fused"),
]
SPEC_13B = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")


@pytest.mark.parametrize("stem,op,triton", VARIANTS)
@pytest.mark.parametrize(
    "spec,reason",
    [
        (KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm80"), "not sm80"),
        (KernelSpec(16, 16, 128, 22, 256, "float32", "sm90"), "float32"),
        (KernelSpec(8, 8, 72, 8, 256, "bfloat16", "sm90"), "multiple of 16 from 48 to 128"),
        (KernelSpec(8, 8, 144, 8, 256, "bfloat16", "sm90"), "multiple of 16 from 48 to 128"),
        (KernelSpec(8, 8, 32, 8, 256, "bfloat16", "sm90"), "multiple of 16 from 48 to 128"),
        (KernelSpec(8, 8, 128, 16, 80, "bfloat16", "sm90"), "multiple of 64"),
    ],
)
def test_unsupported_shapes_go_to_the_triton_variant(stem, op, triton, spec, reason):
    assert reason in registry.get(stem).unsupported(spec)
    usable = [v.stem for v in registry.usable(op, spec)]
    assert stem not in usable
    assert triton in usable


@pytest.mark.parametrize("stem,op,triton", VARIANTS)
@pytest.mark.parametrize("head_dim", [48, 64, 80, 96, 112, 128])
def test_it_runs_every_head_dim_a_multiple_of_16_from_48_to_128(stem, op, triton, head_dim):
    """Every such head dim is usable, and ranked before the Triton-language variant (the
    padded ones, 48 to 112, passed the GPU verify matrix's gradients against float64)."""
    spec = KernelSpec(8, 8, head_dim, 8, 256, "bfloat16", "sm90")
    assert registry.get(stem).unsupported(spec) is None
    usable = [v.stem for v in registry.usable(op, spec)]
    assert usable.index(stem) < usable.index(triton)


@pytest.mark.parametrize("stem", [v[0] for v in VARIANTS])
def test_a_padded_head_dim_masks_every_head_dim_write_and_only_there(stem):
    """D = 96 renders tiles of HEAD_DIM_PAD = 128 columns and masks the gradients' writes
    to HEAD_DIM; D = 128 renders neither (its code is what it was before padding)."""
    variant = registry.get(stem)
    padded = KernelSpec(8, 8, 96, 8, 256, "bfloat16", "sm90")
    plain = dataclasses.replace(padded, head_dim=128)
    split = {"token_splits": 2} if "token_splits" in variant.Config.field_names() else {}
    for config in (variant.Config(), variant.Config(sigmoid="exp", **split)):
        source = render(stem, padded, config)
        assert "HEAD_DIM_PAD = gl.constexpr(128)" in source
        writes = len(re.findall(r"gl\.(?:store|atomic_add)\(ptrs", source))
        assert source.count("< HEAD_DIM)") >= writes > 0
        assert "HEAD_DIM_PAD" not in render(stem, plain, config)


@pytest.mark.parametrize("stem,op,triton", VARIANTS)
def test_it_is_the_preferred_variant_where_it_runs(stem, op, triton):
    """Before the Triton-language variant of its op (the dK/dU/dV kernels' order between
    themselves per spec: test_gluon_bwd_dkvt_ws.py)."""
    usable = [v.stem for v in registry.usable(op, SPEC_13B)]
    assert usable[-1] == triton and stem in usable[:-1]
    interp = KernelSpec(2, 2, 64, 2, 64, "float16", "interpreter")
    assert [v.stem for v in registry.usable(op, interp)] == [triton]


@pytest.mark.parametrize("stem", [v[0] for v in VARIANTS])
def test_the_shared_launch_passes_every_kernel_argument_in_order(stem, monkeypatch):
    """The Gluon backward launchers share sm90.BackwardLaunch: on the CPU (the plan
    made as for an sm90 device), its positional arguments and constexprs are exactly the
    generated kernel's parameters, in order, the outputs where the kernel takes them."""
    module = importlib.import_module(f"mhfgen.variants.{stem}")
    plan_fn = module._launch.make_plan
    # every Gluon backward launcher looks the spec up in kernels.configs.checked_call
    real_spec_of = configs.spec_of
    monkeypatch.setattr(
        configs,
        "spec_of",
        lambda problem, q, k=None: dataclasses.replace(real_spec_of(problem, q, k), target="sm90"),
    )
    inputs = make_inputs(Case("gqa", 1, 300, 8, 2, 128, 4, 128), torch.float16, "cpu")
    q, k, u, v, r, do = inputs
    config = registry.get(stem).Config()
    plan = plan_fn(*inputs, config)
    launch = (
        plan.chunks[0].launch
        if hasattr(plan, "chunks")
        else plan.launches[0]
        if hasattr(plan, "launches")
        else plan.launch
    )
    assert isinstance(launch, sm90.BackwardLaunch)
    outputs = registry.get(stem).outputs
    outs = [torch.empty(1) for _ in outputs]
    args = launch.arguments(q, k, u, v, r, do, *outs)
    names = launch.kernel.arg_names
    constexprs = [n for n in launch.meta if n not in ("num_warps", "maxnreg")]
    assert list(names[len(args) :]) == constexprs
    assert list(names[:6]) == ["q_desc", "do_desc", "k_desc", "u_desc", "v_desc", "R"]
    assert [n.lower() for n in names[6 : 6 + len(outputs)]] == list(outputs)
    assert all(a is o for a, o in zip(args[6 : 6 + len(outputs)], outs))


#: specs a registered Gluon variant's default config is compiled for (the first it supports)
COMPILE_SPECS = (
    KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90"),
    KernelSpec(16, 4, 64, 11, 256, "float16", "sm90"),
    KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90"),  # the FP8-weight forward
)


@pytest.mark.parametrize("stem", [v.stem for v in registry.all_variants() if v.family == "gluon"])
def test_every_registered_gluon_variant_compiles_for_sm90(stem):
    """Every Gluon variant the registry holds, found there (a new one needs no line
    here): its default config compiles for sm90 on this machine, no GPU needed, within the
    shared memory its model estimates, with its wgmma kept asynchronous (ptxas serialises
    them all when it finds too few registers, or other code reading an accumulator a
    pending wgmma may write: each then waits for the one before it)."""
    variant = registry.get(stem)
    spec = next(s for s in COMPILE_SPECS if variant.unsupported(s, 16384) is None)
    config = variant.default_config(spec, 16384, 132)
    report = gluon_report(importlib.import_module(type(variant).__module__), spec, config)
    assert report.wgmma > 0 and report.tma_loads > 0
    assert report.wgmma_serialized == "", report.wgmma_serialized
    assert 0 < report.shared <= variant.shared_memory(spec, config)
