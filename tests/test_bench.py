"""`mhfgen bench` and mhfgen.bench: rows, ratios, JSON/CSV fields, failure rows, flag errors.

Tiny fp32 problems; without a GPU they run through Triton's interpreter and the wall-clock
fallback (the figures are meaningless, the fields are not).
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch
from cases import TINY_FLAGS

from mhfgen import bench
from mhfgen.cli import main

TINY = TINY_FLAGS
ENV_FIELDS = ("gpu", "compute_capability", "torch", "triton", "mhfgen", "date", "timer")
GPU = torch.cuda.is_available()


def tiny(tokens: int = 64) -> bench.BenchProblem:
    return bench.BenchProblem(
        heads=2, kv_heads=1, head_dim=32, intermediate=64, experts=2, dtype="float32", tokens=tokens
    )


def test_problem_sizes_and_flops():
    p = tiny(4096)
    assert (p.d_model, p.expert_dim, p.batch, p.seqlen) == (64, 32, 2, 2048)
    assert (tiny(100).batch, tiny(100).seqlen) == (1, 100)
    assert p.shape == "(64, 2, 32, 64, 2, Hkv=1)"
    assert bench.core_flops(p) == 6 * 4096 * 2 * 64 * 32
    assert bench.layer_flops(p) == bench.core_flops(p) + 4 * 4096 * 64**2
    assert bench.pass_flops(10, "fwdbwd") == 30 and bench.pass_flops(10, "fwd") == 10
    with pytest.raises(ValueError, match="divisible"):
        bench.BenchProblem(2, 2, 32, 65, 2, "float32", 64)
    with pytest.raises(ValueError, match="dtype"):
        bench.BenchProblem(2, 2, 32, 64, 2, "int8", 64)


def test_run_benchmarks_rows_and_ratios():
    methods = ["mhfgen", "torch", "swiglu", "layer_mhfgen", "layer_swiglu"]
    rows = bench.run_benchmarks([tiny()], methods, bench.PASSES, repeat=2)
    assert [(r.pass_, r.method) for r in rows] == [(p, m) for p in bench.PASSES for m in methods]
    for r in rows:
        assert r.status == "ok", r.error
        assert r.median_ms > 0 and r.tflops > 0 and r.spread_pct >= 0
        fwd = bench.layer_flops(tiny()) if r.method == "layer_mhfgen" else bench.core_flops(tiny())
        assert r.flops == bench.pass_flops(fwd, r.pass_)
        assert r.scope == ("layer" if r.method.startswith("layer_") else "core")
        assert r.time_vs_mhfgen is not None and r.tflops_vs_mhfgen is not None
        if r.method in bench.BASELINES.values():
            assert r.time_vs_mhfgen == 1.0
        d = r.as_dict()
        assert tuple(d) == bench.ROW_FIELDS and d["pass"] == r.pass_
        assert all(d[f] for f in ENV_FIELDS)
    if not GPU:
        assert all(r.peak_mib is None and r.memory_vs_mhfgen is None for r in rows)
        assert bench.CPU_LABEL in rows[0].timer
    table = bench.format_table(rows)
    assert "layer_swiglu" in table and "4*T*d^2" in table


def test_failures_become_rows(monkeypatch):
    def oom(p, pass_, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")

    def broken(p, pass_, device):
        raise RuntimeError("no kernel today\nsecond line")

    def bad_compile(fn):
        def compiled(*args):
            raise RuntimeError("InductorError: no C compiler")

        return compiled

    monkeypatch.setitem(
        bench.METHODS, "oomer", bench.Method("oomer", "core", "", oom, bench.core_flops)
    )
    monkeypatch.setitem(
        bench.METHODS, "broken", bench.Method("broken", "core", "", broken, bench.core_flops)
    )
    monkeypatch.setattr(torch, "compile", bad_compile)
    rows = bench.run_benchmarks(
        [tiny()], ["oomer", "broken", "torch_compile", "torch"], ["fwd"], repeat=1
    )
    status = {r.method: r for r in rows}
    assert status["oomer"].status == "oom" and "out of memory" in status["oomer"].error
    assert status["broken"].status == "failed"
    assert status["broken"].error == "building inputs: RuntimeError: no kernel today"
    assert status["torch_compile"].status == "failed"
    assert (
        "compilation" in status["torch_compile"].error
        and "no C compiler" in status["torch_compile"].error
    )
    assert status["torch"].status == "ok"  # later rows still run
    assert all(r.median_ms is None and r.tflops is None for r in rows[:3])
    table = bench.format_table(rows)
    assert "oom [1]" in table and "no kernel today" in table


def test_cli_json_csv_sweep(tmp_path, capsys):
    js, cs = tmp_path / "b.json", tmp_path / "b.csv"
    code = main(
        [
            "bench",
            *TINY,
            "--tokens",
            "64,32",
            "--layer",
            "--repeat",
            "1",
            "--json",
            str(js),
            "--csv",
            str(cs),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    methods = bench.methods_of("core", available_only=True, default_only=True)
    methods += bench.methods_of("layer")
    doc = json.loads(js.read_text())
    rows = doc["rows"]
    assert doc["format"] == "mhfgen-bench/1" and "6*T*H*I*D" in doc["flop_note"]
    assert len(rows) == 2 * 2 * len(methods)
    assert {(r["tokens"], r["pass"], r["method"]) for r in rows} == {
        (t, p, m) for t in (32, 64) for p in bench.PASSES for m in methods
    }
    for r in rows:
        assert set(r) == set(bench.ROW_FIELDS)
        assert r["dtype"] == "float32" and r["shape"] == "(64, 2, 32, 64, 2, Hkv=1)"
        assert r["status"] in ("ok", "oom", "failed")
        assert r["status"] != "ok" or (r["median_ms"] > 0 and r["tflops"] > 0)
        assert r["status"] == "ok" or r["error"]
        assert r["date"].endswith("+00:00") and r["mhfgen"] and r["torch"] and r["triton"]
    assert all(r["status"] == "ok" for r in rows if r["method"] != "torch_compile")
    with open(cs, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == bench.ROW_FIELDS
        assert len(list(reader)) == len(rows)
    if not GPU:
        assert bench.CPU_LABEL in out.out and bench.CPU_LABEL in out.err
        assert all(r["peak_mib"] is None for r in rows)
    assert "mhfgen" in out.out and "forward + backward" in out.out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tokens", "abc"], "--tokens: expected positive integers"),
        (["--tokens", "64,0"], "--tokens must be >= 1"),
        (["--passes", "fwd,back"], "--passes: unknown 'back'"),
        (["--methods", "mhfgen,cublas"], "--methods: unknown 'cublas'"),
        (["--repeat", "0"], "--repeat must be >= 1"),
        (["--plot", "x.jpg"], "--plot: expected a .png"),
        (["--json", "/nonexistent/dir/x.json"], "--json: directory"),
        (["--intermediate", "65"], "divisible by --experts"),
        (["--head-dim", "8"], "head_dim"),
        (["--kv-heads", "3"], "kv_heads"),
    ],
)
def test_cli_bad_flags(flags, message, capsys):
    argv = ["bench", *TINY, "--tokens", "64", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("mhfgen bench: error:")


@pytest.mark.skipif(GPU, reason="CPU-only checks")
def test_cli_cpu_refusals(capsys):
    assert main(["bench", *TINY[:-2], "--tokens", "64"]) == 2  # default dtype bfloat16
    assert "bfloat16 needs a GPU" in capsys.readouterr().err
    assert main(["bench", "--preset", "370M", "--dtype", "float32"]) == 2
    assert "tiny problems" in capsys.readouterr().err


def test_cli_plot(tmp_path, capsys):
    png = tmp_path / "b.png"
    argv = [
        "bench",
        *TINY,
        "--tokens",
        "32,64",
        "--methods",
        "mhfgen,torch",
        "--passes",
        "fwd",
        "--repeat",
        "1",
        "--plot",
        str(png),
    ]
    if importlib.util.find_spec("matplotlib") is None:
        assert main(argv) == 2
        assert "--plot needs matplotlib" in capsys.readouterr().err
    else:
        assert main(argv) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
