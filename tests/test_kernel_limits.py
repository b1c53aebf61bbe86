"""benchmarks/kernel_limits.py: its help, its refusal where nothing is stored, and its grid
sizes against the launchers' own."""

import importlib.util
import math
from pathlib import Path

from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_bwd_dkv_ws as dkv
from mhfgen.variants import flash_mhf_fwd_ws as fwd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_limits.py"


def _script():
    spec = importlib.util.spec_from_file_location("kernel_limits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_and_no_winners(capsys):
    """Called in-process it leaves TRITON_INTERPRET alone (the tests beside it need it)."""
    import os

    before = os.environ.get("TRITON_INTERPRET")
    script = _script()
    try:
        script.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "sm90 compiles" in capsys.readouterr().out
    assert script.main(["--gpu", "no such GPU"]) == 1
    assert "no Gluon winners of 'no such GPU'" in capsys.readouterr().err
    assert os.environ.get("TRITON_INTERPRET") == before


def test_grid_sizes_follow_the_launchers():
    script = _script()
    spec = KernelSpec(16, 4, 128, 22, 256, "bfloat16", "sm90")
    config = dkv.BwdDkvWsConfig(token_splits=3)
    # the dK/dU/dV plan's grid: (I / block_n, Hkv, token splits)
    assert script.grid_size(spec, dkv.KERNEL, 16384, config) == (5632 // 64) * 4 * 3
    assert script.grid_size(spec, "flash_mhf_bwd_dq_ws", 1000, None) == math.ceil(1000 / 128) * 16
    ws = fwd.WsConfig()
    assert script.grid_size(spec, "flash_mhf_fwd_ws", 4096, ws) == fwd.work_tiles(spec, ws, 4096)
    assert script.grid_size(spec, "flash_mhf_bwd_fused", 4096, None) is None
