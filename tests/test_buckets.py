"""The one shape-bucketing function, shared by the tuner and the dispatcher."""

import pytest

from mhfgen.spec import KernelSpec
from mhfgen.tuning import buckets, lookup, problem
from mhfgen.tuning.buckets import DECODE_TOKENS, bucket_distance, shape_bucket


@pytest.mark.parametrize("tokens", [0, 1, 2, 3, 17, 63, 64])
def test_decode_token_counts_are_their_own_bucket(tokens):
    assert shape_bucket(tokens) == tokens


@pytest.mark.parametrize(
    "tokens,bucket",
    [(65, 128), (100, 128), (128, 128), (129, 256), (12000, 16384), (16384, 16384), (16385, 32768)],
)
def test_larger_counts_round_up_to_a_power_of_two(tokens, bucket):
    assert shape_bucket(tokens) == bucket


def test_buckets_are_monotonic_and_cover_their_members():
    previous = -1
    for tokens in range(0, 5000):
        b = shape_bucket(tokens)
        assert b >= tokens and b >= previous
        if tokens > DECODE_TOKENS:
            assert b < 2 * tokens  # never more than one power of two above
        previous = b


@pytest.mark.parametrize("bad", [-1, 1.5, "8", True])
def test_bad_token_counts_raise(bad):
    with pytest.raises(ValueError):
        shape_bucket(bad)


def test_tuner_and_dispatcher_use_the_same_function():
    assert lookup.shape_bucket is buckets.shape_bucket
    assert problem.shape_bucket is buckets.shape_bucket
    spec = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
    assert problem.TuningProblem(spec, 12000).bucket == shape_bucket(12000) == 16384


def test_bucket_distance_is_symmetric_in_log2():
    assert bucket_distance(1024, 4096) == bucket_distance(4096, 1024) == 2.0
    assert bucket_distance(0, 1) == 0.0
