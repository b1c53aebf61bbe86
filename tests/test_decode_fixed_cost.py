"""benchmarks/decode_fixed_cost.py: its line fit, and what it says without a GPU."""

import pytest
import torch
from benchmark_scripts import load_benchmark


def _script():
    return load_benchmark("decode_fixed_cost")


def test_the_fit_recovers_a_line():
    fixed, slope = _script().fit([(x, 5.0 + 0.34 * x) for x in (6.3, 18.9, 34.6, 69.2, 138.4)])
    assert fixed == pytest.approx(5.0) and slope == pytest.approx(0.34)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
def test_it_says_it_needs_a_gpu(capsys):
    assert _script().main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_one_expert_count_cannot_fit_a_line():
    with pytest.raises(SystemExit):
        _script().main(["--experts", "22,22"])
