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


def test_the_benchmarks_share_one_shape_parser(capsys):
    """mhfgen.presets.shape names the layer of every decode benchmark's shape names
    (decode.py, decode_timeline.py, fp8_fwd_check.py --decode-shapes)."""
    from mhfgen.presets import PRESETS, shape

    kv4 = shape("1.3B-kv4")
    assert (kv4.name, kv4.heads, kv4.kv_heads, kv4.expert_dim) == ("1.3B-kv4", 16, 4, 256)
    assert shape("370M") == PRESETS["370M"].__class__(**{**vars(PRESETS["370M"]), "kv_heads": 8})
    fp8_check = load_benchmark("fp8_fwd_check")
    assert fp8_check.decode_shape("1.3B-kv4") == (16, 4, 128, 22, 256)
    assert fp8_check.main(["--decode", "--decode-shapes", "1.3B,2B"]) == 2
    assert "--decode-shapes: unknown shape '2B'" in capsys.readouterr().err
    timeline = load_benchmark("decode_timeline")
    assert timeline.main(["--shapes", "1.3B-kv3"]) == 2
    assert "1.3B-kv3: 3 kv heads do not divide 16 heads" in capsys.readouterr().err


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
