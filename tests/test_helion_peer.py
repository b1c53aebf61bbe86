"""The Helion peer of `mhfgen bench` (mhfgen.peers.helion_fwd, mhfgen.peers.helion_kernel).

CI has neither Helion nor a GPU, so:
- the "not installed" and "no GPU" paths are tested with Helion's module lookup (and the
  GPU check) patched, so that they run wherever the tests do: the method is registered
  but not run by default, and asking for it is a one-line error;
- the kernel body and the bench plumbing are tested with a stand-in `helion` module whose
  `helion.language` primitives run eagerly in PyTorch with Helion's documented meaning
  (`hl.tile` yields index tiles, ragged at the end; `hl.grid` yields ints; `hl.dot`
  multiplies in fp32 and adds `acc`). That checks the algorithm the body writes (indexing,
  kv-head groups, expert routing, ragged tiles) against the reference, and that the
  settings reach `helion.kernel`; it does not check Helion's compiler or the speed of its
  output, which only a GPU run of `mhfgen bench --methods mhfgen,helion` measures;
- where Helion itself is installed, the kernel is also compiled by Helion and run through
  Triton's interpreter with fixed configs against the reference (skipped otherwise).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import json
import sys
import types

import pytest
import torch
from cases import TINY_FLAGS

from mhfgen import bench, peers, reference
from mhfgen.cli import main
from mhfgen.peers import helion_fwd

TINY = TINY_FLAGS


@pytest.fixture
def no_helion(monkeypatch):
    """Helion's module lookup finds nothing, as on a machine without it."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "helion" else real(name, *a)
    )


# --------------------------------------------------------------------------- not installed


def test_without_helion_the_method_is_listed_but_not_run(no_helion):
    assert "not installed" in helion_fwd.available()
    assert "helion" in bench.METHODS and "helion" in bench.methods_of("core")
    assert "helion" not in bench.methods_of("core", available_only=True)
    problem = bench.BenchProblem(2, 1, 32, 64, 2, "float32", 16)
    with pytest.raises(ValueError, match="'helion' cannot run here: the helion package"):
        bench.run_benchmarks([problem], ["helion"], ["fwd"])


def test_cli_without_helion(no_helion, capsys):
    assert main(["bench", *TINY, "--tokens", "16", "--methods", "mhfgen,helion"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "mhfgen bench: error: --methods: helion cannot run here: the helion "
        "package is not installed (pip install helion"
    )
    assert len(err.strip().splitlines()) == 1


def test_cli_bad_helion_flags(capsys):
    assert (
        main(["bench", *TINY, "--tokens", "16", "--methods", "torch", "--helion-budget", "0"]) == 2
    )
    assert "--helion-budget: Helion autotune budget must be a positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's choices
        main(["bench", *TINY, "--tokens", "16", "--helion-effort", "max"])
    assert exc.value.code == 2 and "invalid choice: 'max'" in capsys.readouterr().err


def test_without_a_gpu_the_method_is_left_out(fake_helion, monkeypatch):
    monkeypatch.setattr(helion_fwd, "_has_cuda", lambda: False)
    assert helion_fwd.available().startswith("the helion method needs a CUDA GPU")
    assert "helion" not in bench.methods_of("core", available_only=True)


def test_autotune_settings_are_checked():
    assert helion_fwd.AutotuneSettings() == helion_fwd.AutotuneSettings("quick", 120)
    with pytest.raises(ValueError, match="effort must be one of none, quick, full"):
        helion_fwd.AutotuneSettings("max")
    with pytest.raises(ValueError, match="positive number of seconds"):
        helion_fwd.AutotuneSettings("full", 0)


# --------------------------------------------------------------------------- stand-in Helion

BLOCK = 16  # the stand-in's block size for every tiled dimension left to the autotuner


def _tile(start: int, stop: int) -> torch.Tensor:
    index = torch.arange(start, stop)
    index.begin = start  # Helion's Tile.begin
    return index


def _tiles(size: int, block: int):
    return [_tile(i, min(i + block, size)) for i in range(0, size, block)]


class _FakeLanguage(types.ModuleType):
    def __init__(self):
        super().__init__("helion.language")
        self.__spec__ = importlib.machinery.ModuleSpec("helion.language", None)

    @staticmethod
    def specialize(x):
        return x

    @staticmethod
    def tile(sizes, block_size=None):
        if isinstance(sizes, int):
            return iter(_tiles(sizes, block_size or BLOCK))
        blocks = block_size or [None] * len(sizes)
        return itertools.product(*(_tiles(s, b or BLOCK) for s, b in zip(sizes, blocks)))

    @staticmethod
    def grid(n):
        return iter(range(n))

    @staticmethod
    def zeros(shape, dtype):
        return torch.zeros(
            [len(s) if isinstance(s, torch.Tensor) else s for s in shape], dtype=dtype
        )

    @staticmethod
    def dot(a, b, acc=None, out_dtype=None):
        out = a.float() @ b.float()
        return out if acc is None else acc + out


class _FakeKernel:
    def __init__(self, fn, settings):
        self.fn, self.settings, self.autotuned = fn, settings, []

    def autotune(self, args, force=False):
        self.autotuned.append(tuple(a.shape for a in args))
        return f"Config(block_sizes=[{BLOCK}, {BLOCK}])"

    def __call__(self, *args):
        return self.fn(*args)


@pytest.fixture
def fake_helion(monkeypatch):
    helion = types.ModuleType("helion")
    helion.__spec__ = importlib.machinery.ModuleSpec("helion", None)
    helion.language = _FakeLanguage()
    helion.kernels = []

    def kernel(fn, **settings):
        k = _FakeKernel(fn, settings)
        helion.kernels.append(k)
        return k

    helion.kernel = kernel
    monkeypatch.setitem(sys.modules, "helion", helion)
    monkeypatch.setitem(sys.modules, "helion.language", helion.language)
    # the kernel module is imported afresh against the stand-in, and forgotten afterwards
    monkeypatch.delitem(sys.modules, "mhfgen.peers.helion_kernel", raising=False)
    monkeypatch.delattr(peers, "helion_kernel", raising=False)
    monkeypatch.setattr(helion_fwd, "_kernels", {})
    monkeypatch.setattr(helion_fwd, "_tuned", set())
    monkeypatch.setattr(helion_fwd, "TUNINGS", [])
    monkeypatch.setattr(helion_fwd, "SETTINGS", helion_fwd.AutotuneSettings())
    monkeypatch.setattr(helion_fwd, "_has_cuda", lambda: True)  # the rows run on the CPU
    yield helion
    sys.modules.pop("mhfgen.peers.helion_kernel", None)
    if hasattr(peers, "helion_kernel"):
        delattr(peers, "helion_kernel")


@pytest.mark.parametrize(
    "B,L,H,Hkv,D,E,De",
    [
        (1, 40, 2, 2, 32, 2, 32),  # 40 tokens: a ragged last token tile
        (2, 20, 4, 2, 16, 3, 48),  # kv-head groups, De = 48: a ragged tile in each expert
    ],
)
def test_the_kernel_body_computes_flash_mhf(fake_helion, B, L, H, Hkv, D, E, De):
    torch.manual_seed(0)
    q = torch.randn(B, L, H, D)
    k, u, v = (torch.randn(Hkv, E, De, D) * D**-0.5 for _ in range(3))
    r = torch.softmax(torch.randn(B, L, H, E), -1)
    o = helion_fwd.flash_mhf_fwd(q, k, u, v, r)
    want = reference.flash_mhf(*(t.double() for t in (q, k, u, v, r)))
    assert o.shape == q.shape and o.dtype == q.dtype
    assert ((o.double() - want).norm() / want.norm()).item() < 1e-5


def test_settings_reach_helion_and_the_autotuner_runs_once_per_shape(fake_helion):
    helion_fwd.configure(helion_fwd.AutotuneSettings("full", 7))
    args = [
        torch.randn(1, 16, 2, 32),
        *(torch.randn(1, 2, 32, 32) for _ in range(3)),
        torch.rand(1, 16, 2, 2),
    ]
    for _ in range(2):
        helion_fwd.flash_mhf_fwd(*args)
    (kernel,) = fake_helion.kernels
    assert kernel.settings["static_shapes"] is True
    assert kernel.settings["autotune_effort"] == "full"
    assert kernel.settings["autotune_budget_seconds"] == 7
    assert kernel.settings["dot_precision"] == "ieee"  # fp32 inputs
    assert len(kernel.autotuned) == 1 and len(helion_fwd.TUNINGS) == 1
    assert "effort full, budget 7 s" in helion_fwd.describe_tunings()[0]
    helion_fwd.configure(helion_fwd.AutotuneSettings("none", 7))
    helion_fwd.flash_mhf_fwd(*args)  # a new kernel with Helion's default config, no search
    assert len(fake_helion.kernels) == 2 and not fake_helion.kernels[1].autotuned


def test_bench_measures_helion_forward_only_with_ratios(fake_helion, tmp_path, capsys):
    out = tmp_path / "b.json"
    code = main(
        [
            "bench",
            *TINY,
            "--tokens",
            "32",
            "--methods",
            "mhfgen,helion",
            "--helion-effort",
            "quick",
            "--helion-budget",
            "5",
            "--repeat",
            "1",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["method"], r["pass"]) for r in rows) == [
        ("helion", "fwd"),
        ("mhfgen", "fwd"),
        ("mhfgen", "fwdbwd"),
    ]
    (row,) = [r for r in rows if r["method"] == "helion"]
    assert row["status"] == "ok" and row["tflops"] > 0 and row["time_vs_mhfgen"] > 0
    assert "helion autotune (effort quick, budget 5 s)" in captured.err
    assert fake_helion.kernels[0].settings["autotune_budget_seconds"] == 5
    assert "helion" in bench.methods_of("core", available_only=True)


def test_bench_h200_summary_has_a_helion_column(fake_helion, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_h200.py"
    module_spec = importlib.util.spec_from_file_location("bench_h200_under_test", path)
    bench_h200 = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench_h200)
    problem = bench.BenchProblem(2, 1, 32, 64, 2, "float32", 32)
    monkeypatch.setattr(bench_h200, "TOKENS", problem.tokens)
    rows = bench.run_benchmarks([problem], ["mhfgen", "torch", "helion"], bench.PASSES, repeat=1)
    summary = bench_h200.summary_markdown(rows, {"tiny": problem.shape})
    assert "Helion, autotuned" in summary and "vs Helion (forward)" in summary
    helion_row = [line for line in summary.splitlines() if line.startswith("| tiny")][0]
    assert helion_row.rstrip(" |").endswith("/ -, -")  # forward only; no GPU peak here


# --------------------------------------------------------------------------- real Helion


def _real_helion():
    try:
        import helion
    except ImportError:
        return None
    return helion if hasattr(helion, "kernel") and hasattr(helion, "Config") else None


@pytest.mark.skipif(_real_helion() is None, reason="helion is not installed")
@pytest.mark.parametrize(
    "sizes,block_sizes",
    [
        ((1, 40, 2, 2, 32, 2, 32), [16, 16]),
        ((2, 20, 4, 2, 16, 3, 48), [16, 32]),
    ],
)
def test_helion_compiles_the_kernel_and_it_matches_the_reference(sizes, block_sizes):
    """Helion's own compiler on the body, run by Triton's interpreter (no GPU), fp32."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1, mhfgen sets it without CUDA)")
    helion = _real_helion()
    from mhfgen.peers import helion_kernel

    B, L, H, Hkv, D, E, De = sizes
    torch.manual_seed(0)
    q = torch.randn(B, L, H, D)
    k, u, v = (torch.randn(Hkv, E, De, D) * D**-0.5 for _ in range(3))
    r = torch.softmax(torch.randn(B, L, H, E), -1)
    kernel = helion.kernel(
        helion_kernel.flash_mhf_fwd,
        static_shapes=True,
        dot_precision="ieee",
        config=helion.Config(block_sizes=block_sizes),
    )
    o = kernel(q, k, u, v, r)
    want = reference.flash_mhf(*(t.double() for t in (q, k, u, v, r)))
    assert ((o.double() - want).norm() / want.norm()).item() < 1e-5


@pytest.mark.skipif(_real_helion() is None, reason="helion is not installed")
def test_helion_accepts_the_settings():
    from mhfgen.peers import helion_kernel

    settings = helion_kernel.make_kernel("full", 7, True).settings
    assert (settings.autotune_effort, settings.autotune_budget_seconds) == ("full", 7)
    assert settings.static_shapes and settings.dot_precision == "ieee"
