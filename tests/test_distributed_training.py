"""DDP, FSDP2 and tensor parallelism over heads (the HeadParallel style in the model's plan):
training steps of mhfgen.lm's CausalLM on 2 gloo processes against one process.

The FlashMHF layers run the generated kernels through Triton's interpreter (backend
"triton"). Each check: 2 SGD steps; the loss and every gradient at each step, every
parameter after the last (mhfgen.parallel.parity.lm_step_parity).
"""
import pytest
import torch

from mhfgen.parallel.launch import run_on_ranks
from mhfgen.parallel.parity import lm_step_parity, tiny_lm_case


def _steps(wrappers: tuple[str, ...], compiled: bool) -> list:
    case = tiny_lm_case("triton")
    return [lm_step_parity(w, case, torch.device("cpu"), compiled=compiled) for w in wrappers]


def _check(per_rank: list) -> None:
    first = per_rank[0]
    for result in first:
        assert result.ok, result.describe()
        grads = [k for k in result.errors if k.startswith("grad:")]
        # every parameter of the model was compared, the FlashMHF ones included
        assert len(grads) == 26 and "grad:blocks.1.ffn.key" in grads, sorted(grads)
    # every rank saw the same errors (the loss is reduced, the gradients gathered)
    assert [r.errors for r in per_rank[1]] == [r.errors for r in first]


def test_eager_training_steps_match_one_process():
    _check(run_on_ranks(_steps, 2, (("ddp", "fsdp2", "tp"), False)))


def test_compiled_training_steps_match_one_process():
    # NOTE: the slowest test of the suite: inductor compiles the block's graph for the CPU
    # (C++), 40-90 s on a loaded 2-core machine, once for DDP and FSDP2 (the same graph,
    # from the cache the second time) and once for TP (DTensor collectives in the graph)
    _check(run_on_ranks(_steps, 2, (("ddp", "fsdp2", "tp"), True)))


def test_unknown_wrapper_is_refused():
    with pytest.raises(ValueError, match="wrapper must be one of"):
        lm_step_parity("zero3", tiny_lm_case(), torch.device("cpu"))
