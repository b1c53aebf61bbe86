"""benchmarks/kernel_limits.py: its help, its refusal where nothing is stored, and its grid
sizes against the launchers' own."""

import math

from benchmark_scripts import load_benchmark

from mhfgen.spec import KernelSpec
from mhfgen.variants import flash_mhf_bwd_dkv_ws as dkv
from mhfgen.variants import flash_mhf_fwd_ws as fwd


def _script():
    return load_benchmark("kernel_limits")


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


PTX = """
$L__BB0_1:
\tcp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd1, {%r2, %r3}], [%r4];
\t@%p3 mbarrier.arrive.expect_tx.shared.b64 _, [%r5], 32768;
\t@%p1 bra $L__BB0_1;
$L__BB0_2:
\twgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r10, %r11}, %rd2, %rd3, p, 1, 1, 0, 1;
\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r12, %r13}, {%r14, %r15, %r16, %r17}, %rd4, p, 1, 1, 1;
\twgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {%r18}, %rd5, %rd6, p, 1, 1;
\tst.shared.v4.b32 [%r20], {%r21, %r22, %r23, %r24};
\tstmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%r25], {%r26, %r27, %r28, %r29};
$L__BB0_3:
\tadd.s32 %r30, %r30, 1;
\t@%p2 bra $L__BB0_3;
\t@%p4 bra $L__BB0_2;
"""


def test_ptx_loops_count_the_consumers_work_and_the_producers_bytes():
    """Per innermost loop with wgmma: multiply-adds, tensor clocks (e4m3 at twice the
    rate) and shared-memory bytes (A read only from shared memory, B always; stores of
    128 threads; stmatrix of four warps); per producer loop its expect_tx bytes. A loop
    that holds another is not a consumer's main loop (here the one from $L__BB0_2, which
    holds $L__BB0_3, has no innermost wgmma loop at all)."""
    script = _script()
    assert script.ptx_loops(PTX) == ([], 32768)
    flat = PTX.replace("$L__BB0_3:\n", "").replace("\t@%p2 bra $L__BB0_3;\n", "")
    consumers, tma = script.ptx_loops(flat)
    macs = 64 * 128 * 16 + 64 * 64 * 16 + 64 * 64 * 32
    clocks = (64 * 128 * 16 + 64 * 64 * 16) / 2048 + 64 * 64 * 32 / 4096
    smem = (128 * 16 + 64 * 16) * 2 + 64 * 16 * 2 + (64 * 32 + 64 * 32) * 1
    smem += 16 * 128 + 4 * 64 * 2 * 4
    assert consumers == [(macs, clocks, smem)] and tma == 32768


def test_innermost_loops_of_a_sass_listing():
    script = _script()
    sass = [
        ".L_x_1:",
        "        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;",
        ".L_x_2:",
        "        /*0020*/                   IADD3 R1, R1, 0x1, RZ ;",
        "        /*0030*/              @P0 BRA `(.L_x_2) ;",
        "        /*0040*/              @P1 BRA `(.L_x_1) ;",
    ]
    loops = script.innermost_loops(sass, r"^\.(L_x_\d+):", r"BRA\s+`\(\.(L_x_\d+)\)")
    assert loops == [sass[2:5]]


def test_model_refuses_a_variant_without_an_sm90_compile(capsys):
    assert _script().main(["--model", "flash_mhf_fwd"]) == 1
    assert "not a Gluon variant" in capsys.readouterr().err


def test_model_prints_the_bounds_of_an_untimed_schedule():
    """--model compiles the heuristic config on each shape (in its own process: the
    script sets TRITON_INTERPRET=0 before anything imports Triton) and prints its three
    bounds, on presets and on a spec key's sizes."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_limits.py"
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--model",
            "flash_mhf_bwdt_ws",
            "--shapes",
            "1.3B,1.3B-kv4,H16-Hkv16-D64-E11-De256",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    rows = {line.split(" | ")[0]: line.split(" | ") for line in out.splitlines() if " | " in line}
    row = rows["1.3B"]
    assert row[1] == "s2 regs 24/240 wg32 vec hc1"
    tensor, smem, issue = (float(x) for x in row[2:5])
    assert tensor == 2048  # 8 GEMM units of a 64 x 64 x 128 tile, both consumers
    assert smem > tensor and issue > 0
    assert row[-1] == "asynchronous"
    assert "1.3B-kv4" in rows
    d64 = rows["H16-Hkv16-D64-E11-De256"]  # a spec key's sizes; half the tensor work
    assert d64[1] == "s4 regs 24/240 wg32 vec hc1" and float(d64[2]) == tensor / 2
