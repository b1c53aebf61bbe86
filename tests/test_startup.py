"""Start-up: the command line's parsers need neither torch nor Triton, `import mhfgen` loads
neither the tuner nor optuna, and a forward call served from a tuned database loads no
optuna. Each check runs in a fresh interpreter, where sys.modules tells what was imported."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: modules of the tuner: what the runtime must not import
TUNER = (
    "optuna",
    "mhfgen.tuning.search",
    "mhfgen.tuning.study",
    "mhfgen.tuning.timer",
    "mhfgen.tuning.workers",
    "mhfgen.tuning.workload",
    "mhfgen.tuning.compile",
)
COMMANDS = ("tune", "list", "show", "export", "import", "verify", "bench", "codegen", "doctor")


def _python(code: str, **env) -> dict:
    """Run `code` in a fresh interpreter; the JSON object it printed last."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LOADED = """
import json, sys
print(json.dumps({"modules": sorted(m for m in sys.modules
                                    if m.split(".")[0] in ("torch", "triton", "optuna", "mhfgen"))}))
"""


def _top(modules) -> set:
    return {m.split(".")[0] for m in modules}


def test_every_help_builds_its_parser_without_torch_or_triton():
    code = (
        f"""
import contextlib, io
from mhfgen.cli import main
for argv in [["--help"]] + [[c, "--help"] for c in {COMMANDS!r}]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: mhfgen" in out.getvalue(), argv
"""
        + LOADED
    )
    modules = _python(code)["modules"]
    assert not _top(modules) & {"torch", "triton", "optuna"}, modules


def test_import_mhfgen_loads_neither_torch_nor_the_tuner():
    modules = set(_python("import mhfgen" + LOADED)["modules"])
    assert not _top(modules) & {"torch", "triton", "optuna"}, modules
    assert not {m for m in modules if m.startswith("mhfgen.tuning")}, modules


def test_the_public_names_load_on_first_use_without_the_tuner():
    code = (
        """
import mhfgen
from mhfgen import FlashMHF, SwiGLU, flash_mhf, reference
assert callable(flash_mhf) and mhfgen.flash_mhf is flash_mhf
assert reference.flash_mhf and FlashMHF and SwiGLU
assert set(mhfgen.__all__) <= set(dir(mhfgen))
"""
        + LOADED
    )
    modules = set(_python(code)["modules"])
    assert not modules & set(TUNER), sorted(modules & set(TUNER))
    assert "mhfgen.tuning.on_miss" not in modules


def test_an_unknown_attribute_is_an_attribute_error():
    import mhfgen

    with pytest.raises(AttributeError, match="no_such_name"):
        mhfgen.no_such_name  # noqa: B018


def test_importing_mhfgen_after_torch_registers_the_custom_ops():
    code = """
import json, torch, mhfgen
print(json.dumps({"op": hasattr(torch.ops.mhfgen, "flash_mhf")}))
"""
    assert _python(code)["op"]


def test_triton_imported_after_mhfgen_runs_in_the_interpreter_without_cuda():
    code = """
import json, os
import mhfgen
import triton
from triton import knobs
print(json.dumps({"env": os.environ.get("TRITON_INTERPRET"),
                  "interpret": bool(knobs.runtime.interpret)}))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full_env = {**env, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"env": "1", "interpret": True}


def test_the_command_line_dtype_names_are_the_kernels():
    from mhfgen.presets import DTYPE_NAMES, FP8_DTYPE_NAMES
    from mhfgen.spec import DTYPES, FP8_WEIGHT_DTYPES

    assert DTYPE_NAMES == tuple(DTYPES)
    assert FP8_DTYPE_NAMES == tuple(FP8_WEIGHT_DTYPES)


def test_a_forward_served_from_a_tuned_database_loads_no_optuna(tmp_path):
    import triton

    import mhfgen  # noqa: F401 - first: Triton's interpreter on before triton is imported
    from mhfgen.codegen import template_hash
    from mhfgen.spec import KernelSpec
    from mhfgen.tuning.buckets import shape_bucket
    from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
    from mhfgen.variants.flash_mhf_fwd import Config

    # the database is written here; the forward runs in a child process with
    # TRITON_INTERPRET=1 and CPU tensors, whatever this process imported first
    spec = KernelSpec(2, 2, 32, 2, 32, "float32", "interpreter")
    tokens = 16
    key = TuningKey.of(
        "flash_mhf_fwd",
        template_hash("flash_mhf_fwd"),
        spec,
        shape_bucket(tokens),
        tokens,
        "interpreter",
        "none",
        triton.__version__,
    )
    db_path = tmp_path / "tuned.sqlite"
    with TuningDB.open(db_path) as db:
        db.put_winner(
            WinnerRecord(
                key,
                Config(block_m=16, block_n=16),
                1.0,
                1.0,
                2.0,
                2.0,
                "test",
                5,
                "0",
                "0",
                utc_now(),
            )
        )
    code = """
import json, sys, torch
import mhfgen
from mhfgen import dispatch
q = torch.randn(1, 16, 2, 32)
k = torch.randn(2, 2, 32, 32) / 6
r = torch.rand(1, 16, 2, 2)
with torch.no_grad():
    mhfgen.flash_mhf(q, k, k, k, r)
from mhfgen.spec import KernelSpec
spec = KernelSpec(2, 2, 32, 2, 32, "float32", "interpreter")
choice = dispatch.explain_choice("flash_mhf_fwd", spec, 16, torch.device("cpu"))
print(json.dumps({"source": choice.source, "modules": sorted(sys.modules)}))
"""
    result = _python(code, MHFGEN_DB=str(db_path), MHFGEN_TUNE_ON_MISS="1", TRITON_INTERPRET="1")
    assert result["source"] == "exact"
    assert not set(result["modules"]) & set(TUNER), sorted(set(result["modules"]) & set(TUNER))


def _best_of(argv: list[str], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            argv,
            capture_output=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=300,
        )
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.slow
def test_help_takes_under_half_the_time_of_importing_torch():
    torch_s = _best_of([sys.executable, "-c", "import torch"])
    for argv in (["--help"], ["tune", "--help"], ["bench", "--help"]):
        help_s = _best_of([sys.executable, "-m", "mhfgen", *argv])
        assert help_s < 0.5 * torch_s, (argv, help_s, torch_s)
