"""Token counts are checked in one place (mhfgen.config_fields.token_count): a tuned
problem, a record line and the commands' --tokens flags all ask it."""

import pytest

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on
from mhfgen.config_fields import token_count
from mhfgen.spec import KernelSpec
from mhfgen.tuning.problem import TuningProblem


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "tokens must be >= 1, got 0"),
        (-3, "tokens must be >= 1, got -3"),
        (True, "tokens must be a positive int, got True"),
        (2.0, "must be a positive int"),
        ("16", "must be a positive int"),
        (None, "must be a positive int"),
    ],
)
def test_token_count_is_one_check_for_every_reader(value, message):
    with pytest.raises(ValueError, match=message):
        token_count(value)
    assert token_count(1) == 1 and token_count(16384, "--tokens") == 16384
    with pytest.raises(ValueError, match="^TuningProblem.tokens must be"):
        TuningProblem(KernelSpec(2, 2, 16, 2, 16, "float32", "interpreter"), value)
