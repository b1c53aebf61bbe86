"""Runs one kernel of one case against the float64 reference, with poisoned outputs."""

from functools import cache

import pytest
import torch

from mhfgen.kernels import buffers
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.verification import Case, make_inputs, reference_outputs


def inputs_and_reference(case: Case, dtype: torch.dtype, q_layout: str = "view"):
    """The case's CPU inputs and their float64 reference outputs, for kernels run through
    Triton's interpreter. On a GPU host where the interpreter is off (mhfgen switches it
    on itself only without CUDA) the test is skipped: the GPU tests prove the kernels
    there, and the interpreter cannot be switched on after triton is imported."""
    from triton import knobs

    if not knobs.runtime.interpret:
        pytest.skip("runs kernels on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1)")
    return _inputs_and_reference(case, dtype, q_layout)


@cache
def _inputs_and_reference(case: Case, dtype: torch.dtype, q_layout: str):
    inputs = make_inputs(case, dtype, "cpu", seed=hash(case.name) % 1000, q_layout=q_layout)
    return inputs, reference_outputs(*inputs)


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, dtype, case) -> None:
    """Fail with the error, the tolerance and where the largest mismatch is."""
    tol = tolerance(dtype, grad=name != "o")
    err = relative_error(got, want)
    if not err <= tol:
        diff = (got.double() - want).abs()
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
        nan = int(torch.isnan(got).sum())
        raise AssertionError(
            f"{case.name} {dtype} {name}: relative error {err:.3g} > {tol:.1g}; "
            f"largest |diff| {diff.max().item():.3g} at {where}; NaNs {nan}"
        )


def run_poisoned(fn, *args):
    """fn(*tensors, config=config), args being the tensors and then the config."""
    buffers.set_poison(True)
    try:
        return fn(*args[:-1], config=args[-1])
    finally:
        buffers.set_poison(False)
