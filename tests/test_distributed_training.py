"""Training steps of mhfgen.lm's CausalLM under DDP, FSDP2 and tensor parallelism over heads
(the HeadParallel style in the model's plan) on 2 gloo processes, and FSDP2 over TP on a
2 x 2 mesh of 4, against one process.

The FlashMHF layers run the generated kernels through Triton's interpreter (backend
"triton"; the 2 x 2 mesh excepted). Each check: 2 SGD steps; the loss and every gradient
at each step, every parameter after the last (mhfgen.parallel.parity.lm_step_parity).
"""

import pytest
import torch

from mhfgen.parallel import HEAD_PARAMETERS
from mhfgen.parallel.launch import run_on_ranks
from mhfgen.parallel.parity import lm_step_parity, tiny_lm_case


def _steps(wrapper: str, compiled: bool):
    # compiled: one block (the interpreter's launches are most of the time; the blocks
    # would share one compiled graph anyway)
    case = tiny_lm_case("triton", n_layers=1 if compiled else 2)
    return lm_step_parity(wrapper, case, torch.device("cpu"), compiled=compiled)


def _check(per_rank: list, wrapper: str, compiled: bool) -> None:
    result = per_rank[0]
    assert (result.check, result.compiled, result.world_size) == (wrapper, compiled, 2)
    assert result.ok, result.describe()
    grads = [k for k in result.errors if k.startswith("grad:")]
    # every parameter of the model was compared, the FlashMHF ones included: embedding,
    # 11 per block (2 norms, qkv, out, in/out projections, router, K, U, V, q_norm), norm,
    # head
    blocks = (len(grads) - 3) // 11
    assert len(grads) == 3 + 11 * blocks and blocks >= 1, sorted(grads)
    assert {f"grad:blocks.{blocks - 1}.ffn.{name}" for name in HEAD_PARAMETERS} <= set(grads)
    # every rank saw the same errors (the loss is reduced, the gradients gathered)
    assert per_rank[1].errors == result.errors


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2", "tp"])
def test_eager_training_steps_match_one_process(wrapper):
    _check(run_on_ranks(_steps, 2, (wrapper, False)), wrapper, False)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2", "tp"])
def test_compiled_training_steps_match_one_process(wrapper):
    # NOTE: the slowest tests of the suite: inductor compiles the block's graph for the
    # CPU (C++ through gcc), 40-90 s per test measured on a loaded 2-core machine; TP
    # compiles its own graph (DTensor collectives inside)
    _check(run_on_ranks(_steps, 2, (wrapper, True)), wrapper, True)


def test_unknown_wrapper_is_refused():
    with pytest.raises(ValueError, match="wrapper must be one of"):
        lm_step_parity("zero3", tiny_lm_case(), torch.device("cpu"))


def _steps_2d():
    return lm_step_parity("fsdp2+tp", tiny_lm_case("torch"), torch.device("cpu"))


def test_fsdp2_over_head_parallel_ffns_on_a_2x2_mesh():
    # 4 ranks: FSDP2 over the "dp" pairs, the FFNs' heads over "tp" (the PyTorch path of
    # the layer: 4 interpreters on a 2-core machine would take minutes)
    per_rank = run_on_ranks(_steps_2d, 4)
    assert all(r.ok for r in per_rank), [r.describe() for r in per_rank]
    assert (per_rank[0].check, per_rank[0].world_size) == ("fsdp2+tp", 4)
    assert len([k for k in per_rank[0].errors if k.startswith("grad:")]) == 25
