"""benchmarks/decode_timeline.py: its help, its refusal without a Hopper GPU, its phase
arithmetic, and its patched kernels compiling for sm90 (no GPU needed), so a template
change that breaks the patches fails here."""

import subprocess
import sys

import pytest
import torch
from benchmark_scripts import BENCHMARKS, load_benchmark

from mhfgen import codegen, registry
from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_fwd_fp8_ws as f8

SCRIPT = BENCHMARKS / "decode_timeline.py"


def test_help_and_no_gpu(capsys):
    script = load_benchmark("decode_timeline")
    with pytest.raises(SystemExit) as e:
        script.main(["--help"])
    assert e.value.code == 0 and "--compile-check" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert script.main(["--tokens", "1"]) == 2
        assert "needs an sm90" in capsys.readouterr().err


def test_the_patches_add_timer_reads_and_a_times_argument():
    script = load_benchmark("decode_timeline")
    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    config = registry.get("flash_mhf_fwd").default_config(spec, 1, 132)
    dense = script.instrument_triton(codegen.render("flash_mhf_fwd", spec, config))
    assert dense.count("%globaltimer") == 3 and "seqlen, rows, TIMES," in dense
    fspec = KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90")
    fp8 = script.instrument_fp8(f8.render(fspec, f8.default_config(fspec, 1, 132)))
    assert fp8.count("%globaltimer") == 4 and fp8.count("TIMES") >= 4
    with pytest.raises(RuntimeError, match="the generated kernel changed"):
        script.instrument_triton("def f():\n    pass\n")


def test_phases_are_medians_over_consecutive_calls():
    script = load_benchmark("decode_timeline")
    # 3 calls of 2 programs: start, first tile, loop end, end (ns), 10 us apart
    one = [[0, 500, 8000, 9000], [100, 700, 9000, 9500]]
    times = torch.tensor([[[v + 10_000 * c for v in p] for p in one] for c in range(3)])
    phases = script.summarise(times)
    assert phases["span"] == 10.0 and phases["start skew"] == 0.1
    assert phases["tail"] == 1.0 and phases["reduction"] == 0.5 and phases["gap"] == 0.5
    assert phases["loop end"] == 8.0 and phases["first tile"] == 0.5


def test_the_patched_kernels_compile_for_sm90():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--compile-check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 timer reads" in out.stdout and "0 B spilled" in out.stdout
