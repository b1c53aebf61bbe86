"""The run-time paths never return a wrong number and never break on a bad cache or a bad
stored config: bf16 on the CPU is refused, a tuned config that fails to compile is
replaced by the heuristic (logged once), an unwritable kernel cache is worked around."""

import importlib
import logging

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch
import triton

from mhfgen import codegen, dispatch, registry
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tolerances import relative_error
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord
from mhfgen.variants.flash_mhf_fwd import Config as Fwd
from mhfgen.verification import Case, make_inputs, reference_outputs

fwd_module = importlib.import_module("mhfgen.variants.flash_mhf_fwd")
CASE = Case("hard", batch=1, seqlen=8, heads=2, kv_heads=1, head_dim=32, experts=2, expert_dim=32)
SPEC = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


def inputs(dtype=torch.float32, seed=0):
    return make_inputs(CASE, dtype, "cpu", seed=seed)


# -- bfloat16 on the CPU -----------------------------------------------------------------
def test_flash_mhf_refuses_bf16_on_the_cpu():
    q, k, u, v, r, _ = inputs(torch.bfloat16)
    with pytest.raises(TypeError, match="cannot run bfloat16 on CPU tensors"):
        mhfgen.flash_mhf(q, k, u, v, r)
    leaves = [t.clone().requires_grad_() for t in (q, k, u, v, r)]  # the custom-op path
    with pytest.raises(TypeError, match="cannot run bfloat16 on CPU tensors"):
        mhfgen.flash_mhf(*leaves)


def test_the_triton_layer_refuses_bf16_on_the_cpu_and_autocast_too():
    torch.manual_seed(0)
    layer = mhfgen.FlashMHF(64, 2, 64, 2, backend="triton")
    x = torch.randn(1, 4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="cannot run bfloat16 on CPU tensors"):
            layer(x)
    with pytest.raises(TypeError, match="backend='torch'"):
        layer.to(torch.bfloat16)(x.bfloat16())
    # what the error points to gives the right answer
    ref = mhfgen.FlashMHF(64, 2, 64, 2, backend="torch")
    ref.load_state_dict(layer.float().state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ref(x)
    assert relative_error(y.float(), layer(x)) < 3e-2


def test_fp32_and_fp16_on_the_cpu_still_run():
    for dtype in (torch.float32, torch.float16):
        q, k, u, v, r, do = inputs(dtype)
        got = mhfgen.flash_mhf(q, k, u, v, r)
        want = reference_outputs(q, k, u, v, r, do)["o"]
        assert relative_error(got, want) < (1e-5 if dtype == torch.float32 else 5e-3)


# -- a stored config that fails at run time ----------------------------------------------
BAD = registry.get("flash_mhf_fwd").Config(block_m=16, block_n=16, num_warps=2, num_stages=1)


def _store(tmp_path, monkeypatch, config=BAD, tokens=CASE.tokens):
    path = tmp_path / "tuned.sqlite"
    key = TuningKey.of(
        "flash_mhf_fwd",
        template_hash("flash_mhf_fwd"),
        SPEC,
        shape_bucket(tokens),
        tokens,
        "interpreter",
        "none",
        triton.__version__,
    )
    with TuningDB.open(path) as db:
        db.put_winner(WinnerRecord(key, config, 1.0, 1.0, None, None, "test", 1, "", "", ""))
    monkeypatch.setenv("MHFGEN_DB", str(path))
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "none.sqlite")
    dispatch.clear_cache()


def _failing_compile(monkeypatch, bad=BAD):
    """load_kernel as it is, except that `bad` fails as a config too large for the GPU
    fails to compile (Triton raises OutOfResources there)."""
    real = fwd_module.load_kernel
    calls = []

    def load(kernel, spec, config, *args):
        calls.append(config)
        if config == bad:
            raise RuntimeError("out of resource: shared memory, Required: 999999")
        return real(kernel, spec, config, *args)

    monkeypatch.setattr(fwd_module, "load_kernel", load)
    return calls


def test_a_stored_config_that_fails_to_compile_is_replaced_by_the_heuristic(
    tmp_path, monkeypatch, caplog
):
    _store(tmp_path, monkeypatch)
    assert dispatch.explain_choice("flash_mhf_fwd", SPEC, CASE.tokens, CPU).config == BAD
    calls = _failing_compile(monkeypatch)
    q, k, u, v, r, do = inputs()
    with caplog.at_level(logging.WARNING, logger="mhfgen.dispatch"):
        got = mhfgen.flash_mhf(q, k, u, v, r)
        again = mhfgen.flash_mhf(q, k, u, v, r)
        # another token count of the same bucket would pick the same stored config
        q2, k2, u2, v2, r2, _ = make_inputs(
            Case("b", 1, 7, 2, 1, 32, 2, 32), torch.float32, "cpu", seed=1
        )
        mhfgen.flash_mhf(q2, k2, u2, v2, r2)
    want = reference_outputs(q, k, u, v, r, do)["o"]
    assert relative_error(got, want) < 1e-5 and torch.equal(got, again)
    warnings = [rec for rec in caplog.records if "failed to compile or launch" in rec.message]
    assert len(warnings) == 1 and "out of resource" in warnings[0].message
    choice = dispatch.explain_choice("flash_mhf_fwd", SPEC, CASE.tokens, CPU)
    assert choice.source == "heuristic" and choice.config != BAD
    assert calls.count(BAD) == 1  # tried once, never again


def test_a_failing_config_the_caller_passed_or_the_heuristic_still_raises(tmp_path, monkeypatch):
    _failing_compile(monkeypatch)
    q, k, u, v, r, _ = inputs()
    with pytest.raises(RuntimeError, match="out of resource"):
        fwd_module.flash_mhf_fwd(q, k, u, v, r, config=BAD)
    heuristic = dispatch.explain_choice("flash_mhf_fwd", SPEC, CASE.tokens, CPU).config
    dispatch.clear_cache()
    _failing_compile(monkeypatch, bad=heuristic)
    with pytest.raises(RuntimeError, match="out of resource"):
        mhfgen.flash_mhf(q, k, u, v, r)


def test_bad_inputs_keep_their_own_error_with_a_stored_config(tmp_path, monkeypatch):
    _store(tmp_path, monkeypatch)
    q, k, u, v, r, _ = inputs()
    with pytest.raises(ValueError, match="r must have shape"):
        mhfgen.flash_mhf(q, k, u, v, r[..., :1])


# -- the kernel cache --------------------------------------------------------------------
def test_an_unwritable_kernel_cache_falls_back_to_a_private_folder(tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(blocked))
    monkeypatch.setattr(codegen, "_fallback", None)
    monkeypatch.setattr(codegen, "_loaded", {})
    q, k, u, v, r, do = inputs(seed=5)
    config = Fwd(block_m=32, block_n=32, num_warps=1, num_stages=1)
    with caplog.at_level(logging.WARNING, logger="mhfgen.codegen"):
        got = fwd_module.flash_mhf_fwd(q, k, u, v, r, config=config)
    assert relative_error(got, reference_outputs(q, k, u, v, r, do)["o"]) < 1e-5
    assert "cannot write generated kernels" in caplog.text and "MHFGEN_CACHE_DIR" in caplog.text
    assert codegen._fallback is not None and any(codegen._fallback.iterdir())


def test_a_cache_file_replaced_by_a_folder_is_worked_around(tmp_path, monkeypatch):
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(codegen, "_fallback", None)
    monkeypatch.setattr(codegen, "_loaded", {})
    config = Fwd(block_m=16, block_n=32, num_warps=1, num_stages=1)
    source = codegen.render("flash_mhf_fwd", SPEC, config)
    import hashlib

    name = f"flash_mhf_fwd_{hashlib.sha256(source.encode()).hexdigest()[:20]}.py"
    (tmp_path / "cache" / "kernels" / name).mkdir(parents=True)
    q, k, u, v, r, do = inputs(seed=6)
    got = fwd_module.flash_mhf_fwd(q, k, u, v, r, config=config)
    assert relative_error(got, reference_outputs(q, k, u, v, r, do)["o"]) < 1e-5
    assert (codegen._fallback / name).is_file()


def test_cpu_kernels_with_the_interpreter_switched_off_say_how_to_switch_it_on(tmp_path):
    """TRITON_INTERPRET=0 on a machine without CUDA: Triton's own error names no driver;
    mhfgen's names the variable, for the layer's norm/router kernels and the core alike."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine has a driver")
    code = (
        "import mhfgen, torch\n"
        "from mhfgen.verification import Case, make_inputs\n"
        "q, k, u, v, r, _ = make_inputs(Case('p', 1, 4, 2, 1, 32, 2, 32), torch.float32,"
        " 'cpu', seed=0)\n"
        "for call in (lambda: mhfgen.FlashMHF(64, 2, 64, 2, backend='triton')("
        "torch.randn(1, 2, 64)), lambda: mhfgen.flash_mhf(q, k, u, v, r)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as exc:\n"
        "        print(str(exc).splitlines()[0])\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ,
        TRITON_INTERPRET="0",
        PYTHONPATH=str(root),
        MHFGEN_CACHE_DIR=str(tmp_path / "cache"),
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert all("set TRITON_INTERPRET=1" in line for line in lines), lines


def test_a_launcher_config_that_is_not_a_variant_config_is_named():
    q, k, u, v, r, do = inputs()
    with pytest.raises(TypeError, match="config must be a kernel variant's config, got dict"):
        fwd_module.flash_mhf_fwd(q, k, u, v, r, config={"block_m": 16})
