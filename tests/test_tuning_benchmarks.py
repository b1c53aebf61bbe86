"""The H200 figure scripts run end to end on the CPU (--cpu-smoke), so they do not rot
between GPU runs; their numbers here mean nothing and say so."""

import json

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from benchmark_scripts import load_benchmark

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


def test_dispatch_overhead_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MHFGEN_DB", str(tmp_path / "user.sqlite"))  # the script replaces it
    out_json = tmp_path / "d.json"
    assert load_benchmark("dispatch_overhead").main(["--cpu-smoke", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "NOT GPU timings" in out
    assert "| bare launch: kernel[grid](...) (JITFunction.run) |" in out
    data = json.loads(out_json.read_text())
    assert (
        data["gpu_timings"] is False
        and "launcher with dispatch (tuned, exact key)" in data["rows_us"]
    )


def test_tuning_figures_suite_smoke(tmp_path, capsys):
    figures = load_benchmark("tuning_figures")
    assert figures.main([str(tmp_path), "--cpu-smoke", "--part", "suite", "--shapes", "2"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "NOT GPU timings" in summary and "smoke-B" in summary
    shape = json.loads((tmp_path / "suite" / "smoke-B.json").read_text())
    assert set(shape["kernels"]) == {"flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv"}
    assert all(k["speedup"] for k in shape["kernels"].values())
    assert len(figures.SUITE) >= 8 and len(figures.GRID_SHAPES) >= 2


def test_grid_spread_sets_the_default_against_the_recorded_grid(tmp_path):
    import dataclasses as dc

    from mhfgen.registry import default_config

    figures = load_benchmark("tuning_figures")
    shape = figures.SUITE[0]
    gpu = {"target": "sm90", "sm_count": 132}
    default = default_config("flash_mhf_fwd", shape.problem("sm90").spec, shape.tokens, 132)
    other = dc.replace(default, num_stages=default.num_stages + 1)
    worse = dc.replace(default, block_n=32)
    records = [
        {"config": dc.asdict(default), "ms": 2.0},
        {"config": dc.asdict(other), "ms": 1.6},
        {"config": dc.asdict(worse), "ms": 5.0},
        {"config": dc.asdict(worse), "error": "x"},
    ]
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / f"{shape.name}-fwd.timings.json").write_text(
        json.dumps({"records": records})
    )
    doc = {"shape": dc.asdict(shape), "kernel": "flash_mhf_fwd", "gpu": gpu}
    spread = figures.grid_spread(tmp_path, doc)
    assert spread == {
        "shape": shape.name,
        "kernel": "flash_mhf_fwd",
        "valid": 3,
        "best_ms": 1.6,
        "default_ms": 2.0,
        "median_ms": 2.0,
        "worst_ms": 5.0,
    }
    doc["kernel"] = "flash_mhf_bwd_dq"  # no timings recorded for it
    assert figures.grid_spread(tmp_path, doc) is None


def test_layer_check_smoke(capsys):
    assert load_benchmark("layer_check").main(["--cpu-smoke"]) == 0
    out = capsys.readouterr().out
    assert "INTERPRETER SMOKE RUN" in out and "verdict: PASS" in out and "d router" in out
