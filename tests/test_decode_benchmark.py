"""benchmarks/decode.py: its shape names and its sweep grid (no GPU needed)."""

import pytest
from benchmark_scripts import load_benchmark

from mhfgen.variants.flash_mhf_fwd import Config


def _script():
    return load_benchmark("decode")


def test_a_preset_with_grouped_kv_heads():
    preset, kv = _script().shape_heads("1.3B-kv4")
    assert (preset.heads, kv) == (16, 4)
    preset, kv = _script().shape_heads("370M")
    assert kv == (preset.kv_heads or preset.heads)


@pytest.mark.parametrize("name", ["2B", "1.3B-kv", "1.3B-kv3", "1.3B-kvx", "1.3B-kv0"])
def test_a_bad_shape_name_says_what_is_valid(name):
    with pytest.raises(ValueError, match="kv heads|unknown shape"):
        _script().shape_heads(name)


def test_main_refuses_a_bad_shape_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        _script().main(["--shapes", "1.3B,1.3B-kv3"])
    assert "--shapes" in capsys.readouterr().err


def test_the_sweep_tries_the_heuristics_own_row_block():
    base = Config(block_m=32, block_n=64, num_warps=4, num_stages=3, group_heads=4, inter_splits=8)
    heights = {c.block_m for c in _script().sweep_grid(base, fp8=False)}
    assert heights == {16, 32, 64}
