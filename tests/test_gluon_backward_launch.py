"""The launch the three Gluon backward kernels share (mhfgen.kernels.sm90.BackwardLaunch),
checked on the CPU against each generated kernel's parameters."""
import dataclasses
import importlib

import pytest
import torch

from mhfgen import registry
from mhfgen.kernels import sm90
from mhfgen.verification import Case, make_inputs


@pytest.mark.parametrize("stem", ["flash_mhf_bwd_dkv_ws", "flash_mhf_bwd_dq_ws",
                                  "flash_mhf_bwd_ws"])
def test_the_shared_launch_passes_every_kernel_argument_in_order(stem, monkeypatch):
    """The three Gluon backward launchers share sm90.BackwardLaunch: on the CPU (the plan
    made as for an sm90 device), its positional arguments and constexprs are exactly the
    generated kernel's parameters, in order, the outputs where the kernel takes them."""
    module = importlib.import_module(f"mhfgen.kernels.{stem}")
    real_spec_of = module.spec_of
    monkeypatch.setattr(module, "spec_of", lambda problem, q: dataclasses.replace(
        real_spec_of(problem, q), target="sm90"))
    inputs = make_inputs(Case("gqa", 1, 300, 8, 2, 128, 4, 128), torch.float16, "cpu")
    q, k, u, v, r, do = inputs
    config = registry.get(stem).Config()
    plan = module._make_plan(*inputs, config)
    launch = (plan.chunks[0].launch if hasattr(plan, "chunks")
              else plan.launches[0] if hasattr(plan, "launches") else plan.launch)
    assert isinstance(launch, sm90.BackwardLaunch)
    outputs = registry.get(stem).outputs
    outs = [torch.empty(1) for _ in outputs]
    args = launch.arguments(q, k, u, v, r, do, *outs)
    names = launch.kernel.arg_names
    constexprs = [n for n in launch.meta if n not in ("num_warps", "maxnreg")]
    assert list(names[len(args):]) == constexprs
    assert list(names[:6]) == ["q_desc", "do_desc", "k_desc", "u_desc", "v_desc", "R"]
    assert [n.lower() for n in names[6:6 + len(outputs)]] == list(outputs)
    assert all(a is o for a, o in zip(args[6:6 + len(outputs)], outs))
