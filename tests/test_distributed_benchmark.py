"""benchmarks/distributed_h200x2.py, the 2-GPU script, run the way the GPU machine runs it
(torchrun, 2 ranks) on CPUs with gloo and CPU-sized cases (--tiny): every function it calls
on the GPU runs here, on the device each rank chose. The compiled checks (--no-compiled
here) call lm_step_parity(compiled=True), which tests/test_distributed_training.py runs.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from benchmark_scripts import load_benchmark

from mhfgen import FlashMHF
from mhfgen.lm.model import CausalLM
from mhfgen.parallel.launch import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_distributed_script_on_cpu_ranks(tmp_path):
    out = tmp_path / "distributed.json"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(ROOT / "benchmarks" / "distributed_h200x2.py"),
        "--tiny",
        "--no-compiled",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--repeats",
        "2",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["gpu"] is None
    checks = [(p["check"], p["dtype"], p["compiled"], p["ok"]) for p in report["parity"]]
    assert checks == [
        ("ddp", "float32", False, True),
        ("fsdp2", "float32", False, True),
        ("tp", "float32", False, True),
        ("tp-layer", "float32", False, True),
        ("tp-layer", "bfloat16", False, True),
    ]
    modes = [(row["mode"], row["degree"]) for row in report["figure"]]
    assert modes == [("1 GPU", 1), ("TP=2", 2)]
    for row in report["figure"]:
        assert row["step_ms"] > 0 and row["peak_mib"] == [None, None]
        tokens = report["case"]["batch"] * report["case"]["seq"]
        assert abs(row["tokens_per_s"] * row["step_ms"] / 1e3 - tokens) < 1e-6 * tokens
    # the closing table, printed by rank 0
    assert "training step (fwd + bwd) of FlashMHF(64, 4, 64, 2)" in proc.stdout
    assert "TP=2" in proc.stdout.split("training step")[-1]


def _script():
    return load_benchmark("distributed_h200x2")


def test_gpu_sizes_are_valid_for_two_ranks():
    # what only the GPU run builds: the layers exist, and TP degree 2 divides their kv heads
    script = _script()
    lm = script.gpu_lm_case()
    model = CausalLM(replace(lm.model, backend="torch"))
    tokens = torch.randint(0, lm.model.vocab_size, (1, lm.seq + 1))
    assert model(tokens[:, :-1], tokens[:, 1:])[1].isfinite()
    assert lm.batch % 2 == 0 and lm.model.mhf_heads % 2 == 0
    tp = script.gpu_tp_case()
    layer = tp.layer("torch", torch.device("cpu"), torch.float32)
    assert layer(torch.randn(1, 3, tp.d_model)).shape == (1, 3, tp.d_model)
    assert tp.n_kv_heads % 2 == 0
    fig = script.FigureCase()
    big = FlashMHF(fig.d_model, fig.n_heads, fig.intermediate_size, fig.n_experts, device="meta")
    assert (big.head_dim, big.expert_dim, big.n_kv_heads % 2) == (128, 256, 0)
    assert fig.tokens == 8 * 2048 and fig.dtype == "bfloat16"


def test_script_outside_torchrun_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distributed_h200x2.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "distributed_h200x2: run it under torchrun: python -m torch.distributed.run "
        "--standalone --nproc_per_node 2 benchmarks/distributed_h200x2.py"
    ]
