"""The FP8-arithmetic Gluon forward (flash_mhf_fwd_fp8_ws) on an sm90 GPU: correctness,
then speed, in one run of about a minute.

    python3 benchmarks/fp8_fwd_check.py [--json out.json] [--tokens 16384]
        [--dtype bfloat16|float16] [--skip-verify] [--skip-timing] [--schedules] [--decode]

1. verify: the kernel (its dispatched config) on six shapes (a slice of the 1.3B preset,
   H16 D128 E22 De256 at 1000 tokens; D = 64 with Hkv < H; 1037 tokens, not a multiple of
   the row block, with E = 1; decode at 1, 37 (Hkv < H) and 64 tokens, the split
   schedules) against
     - the float64 emulation of its own arithmetic (mhfgen.reference.flash_mhf_w8a8: the
       same e4m3 roundings, the same partials), bar mhfgen.tolerances.FP8_EMULATION_BAR
       (2e-2), whole tensor only (a row's scale can flip with one rounding: the bar's doc);
     - the float64 reference on the dequantised weights, bar
       mhfgen.tolerances.FP8_ACTIVATIONS_BAR (6e-2), whole tensor and worst row (x4).
2. speed: the 1.3B preset (H16 D128 E22 De256) at --tokens tokens in --dtype, TFLOP/s =
   6 * T * H * I * D over the median of triton.testing.do_bench, for
     - bf16 Gluon    flash_mhf_fwd_ws on 16-bit weights (its dispatched config)
     - W8 Triton     flash_mhf_fwd on FP8 weights, weight-only (its dispatched config)
     - W8A8 Gluon    flash_mhf_fwd_fp8_ws on FP8 weights (its dispatched config)
   (a config the dispatcher carried over from other token counts, source 'nearest', is
   timed beside the variant's heuristic one, row '(h)'), and the ratio of each to the
   bf16 Gluon forward, plus the one-off cost of V's
   transposed FP8 copy (mhfgen.fp8.transpose_v), made on a layer's first call.
3. with --schedules: each schedule family of the W8A8 kernel (SCHEDULES: the activation
   tile's A operand in shared memory or registers, joint or separate S and G, ping-pong
   consumers, ring depth, staged scales) checked against float64 and the emulation on the
   1.3B slice, then timed at --tokens beside the bf16 Gluon forward, rows 'schedule'.
4. with --decode: each shape of --decode-shapes (presets, -kv<N> for N kv heads; default 1.3B)
   at 1, 8, 32 and 64 tokens in CUDA graphs (each call on its own copy of the weights):
   16-bit weights, FP8 weight-only and the W8A8 split forward at their dispatched
   configs, the 16-bit weights' split forward with its ticket counter reset by a plain
   store and by an atomic exchange (store_reset; the dispatched config otherwise), the
   W8A8 one with the split reduction's loads one at a time (reduce_unroll 1), with two
   consumers sharing each weight tile and with the exchange reset, and at its unswapped heuristic
   (swap_ab = 0) and that with staged_scales flipped (where its loop reads the scales),
   and the dispatched W8A8 config with act_scale flipped (running maximum or fixed bound),
   rows 'decode' with each one's speed-up over the 16-bit weights.
5. with --pdl: each shape of --decode-shapes at 1, 8, 32 and 64 tokens in CUDA graphs, the
   A/B of programmatic dependent launch (the `pdl` field of the swapped decode schedule):
   16-bit weights and the W8A8 split forward at their dispatched configs, each with pdl
   flipped (the 16-bit one where flash_mhf_fwd runs it and pdl is off), each timed back to back (the graph's calls one after another),
   with a bf16 GEMM between calls (x (tokens, H * D) @ W (H * D, H * D), what a model's
   decode puts between its FFN layers) and after the layer's RMSNorm and router kernel
   (mhfgen.norm_router, whose q and R the call then takes: the FlashMHF layer's order;
   the router signals launch_dependents on sm90); a row's time is the pair's, and the
   GEMM and the router alone are rows of their own; outputs checked bitwise against the
   plain launch, rows 'pdl'.
The first launch of each kernel is watched for a hang (an mbarrier deadlock never ends):
a hang ends the run (exit 2). Exit 1 when a check fails, 0 otherwise. --json writes
every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hangs.py, beside this script

SHAPES = (  # name, batch, seqlen, H, Hkv, D, E, De
    ("1.3B_slice", 1, 1000, 16, 16, 128, 22, 256),
    ("d64_gqa", 2, 300, 16, 4, 64, 11, 256),
    ("t1037_e1", 1, 1037, 8, 8, 128, 1, 512),
    # decode: the weight tiles split over programs (one query head or two of a kv group each)
    ("decode_1", 1, 1, 16, 16, 128, 22, 256),
    ("decode_37_gqa", 1, 37, 16, 4, 64, 11, 256),
    ("decode_64", 2, 32, 16, 16, 128, 22, 256),
)
PRESET = ("1.3B", 16, 16, 128, 22, 256)  # name, H, Hkv, D, E, De


def decode_shape(name: str) -> tuple:
    """(H, Hkv, D, E, De) of a --decode-shapes name (mhfgen.presets.shape: a preset, or one
    with '-kv<N>' appended for N kv heads). ValueError naming the valid forms."""
    from mhfgen.presets import shape

    p = shape(name)
    return p.heads, p.kv_heads, p.head_dim, p.experts, p.expert_dim


#: --schedules: name -> Fp8WsConfig fields (the rest the config's defaults)
SCHEDULES = {
    "P in shared memory, separate S and G (default: the fixed bound)": {},
    "P in registers": {"p_operand": "registers"},
    "P in shared memory, joint [S | G]": {"joint_scores": True},
    "P in registers, joint [S | G]": {"p_operand": "registers", "joint_scores": True},
    "ping-pong consumers": {"pingpong": True},
    "3-slot ring": {"stages": 3},
    "5-slot ring": {"stages": 5},
    "two weight tiles per iteration": {"unroll_tiles": 2},
    "scales staged in shared memory": {"staged_scales": True},
    "staged scales, 5-slot ring": {"staged_scales": True, "stages": 5},
    "fixed bound, O before the scores' wait (p_buffers 2)": {"p_buffers": 2},
    "fixed bound, O before the scores' wait, two tiles per iteration": {
        "p_buffers": 2,
        "unroll_tiles": 2,
    },
    "fixed bound, O before the scores' wait, 5-slot ring": {"p_buffers": 2, "stages": 5},
    "running maximum (act_scale)": {"act_scale": "running"},
}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--tokens", type=int, default=16384, help="tokens of the timed calls")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--skip-verify", action="store_true", help="time only")
    p.add_argument("--skip-timing", action="store_true", help="verify only")
    p.add_argument(
        "--schedules",
        action="store_true",
        help="also check and time each schedule family of the W8A8 kernel (SCHEDULES)",
    )
    p.add_argument(
        "--schedules-matching",
        default="",
        metavar="TEXT",
        help="with --schedules, only the families whose label contains TEXT (the default "
        "and the bf16 forward are always timed)",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="also time decode (DECODE_TOKENS) in CUDA graphs: 16-bit weights, FP8 "
        "weight-only and the W8A8 split forward, each with its dispatched config, and the "
        "W8A8 one at its unswapped heuristic (swap_ab = 0), also with staged_scales flipped, "
        "and the dispatched W8A8 config with act_scale flipped",
    )
    p.add_argument(
        "--pdl",
        action="store_true",
        help="also the decode A/B of programmatic dependent launch (the swapped schedule's "
        "pdl field): back to back and with a bf16 GEMM between calls, on --decode-shapes",
    )
    p.add_argument(
        "--decode-shapes",
        default="1.3B",
        help="comma-separated shapes of --decode: presets, each optionally with -kv<N> for N "
        "kv heads (default 1.3B; e.g. 1.3B,1.3B-kv4,370M)",
    )
    return p.parse_args(argv)


def _spec(h, hkv, d, e, de, dtype_name):
    from mhfgen.spec import KernelSpec

    return KernelSpec(h, hkv, d, e, de, dtype_name, "sm90")


def _inputs(case, dtype):
    from mhfgen.verification import fp8_inputs, make_inputs

    q, k, u, v, r, do = make_inputs(case, dtype, "cuda")
    fp8, dense = fp8_inputs(q, k, u, v, r, do)
    return (q, k, u, v, r), fp8, dense


def _reference(q, r, dense) -> torch.Tensor:
    """The float64 output of FlashMHF on the dequantised weights (dense[1:4]), 256 tokens
    of a sequence at a time (bounding the naive form's memory)."""
    from mhfgen.reference import flash_mhf

    return torch.cat(
        [
            flash_mhf(
                q[:, i : i + 256].double(),
                *(w.double() for w in dense[1:4]),
                r[:, i : i + 256].double(),
            )
            for i in range(0, q.shape[1], 256)
        ],
        dim=1,
    )


def verify(dtype, rows: list) -> bool:
    from hangs import finish

    from mhfgen import dispatch, registry
    from mhfgen.tolerances import (
        FP8_EMULATION_BAR,
        ROW_FACTOR,
        relative_error,
        row_error,
        tolerance_for,
    )
    from mhfgen.variants.flash_mhf_fwd_fp8_ws import KERNEL, emulate, flash_mhf_fwd_fp8_ws
    from mhfgen.verification import Case

    ok_all = True
    variant = registry.get(KERNEL)
    for name, b, l, h, hkv, d, e, de in SHAPES:
        case = Case(name, b, l, h, hkv, d, e, de)
        _, (q, k8, u8, v8, r, scales), dense = _inputs(case, dtype)
        spec = _spec(h, hkv, d, e, de, f"{str(dtype).removeprefix('torch.')}_e4m3")
        config = dispatch.choose_config(KERNEL, spec, case.tokens, q.device)
        got = finish(lambda: flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config))
        emulated = emulate(q, k8, u8, v8, r, scales, spec, config)  # its tiles and splits
        ref = _reference(q, r, dense)
        bar = tolerance_for(variant, q.dtype, numel=ref.numel())
        errs = {
            "emulation": (relative_error(got, emulated), None, FP8_EMULATION_BAR),
            "float64": (relative_error(got, ref), row_error(got, ref), bar),
        }
        for against, (err, worst, tol) in errs.items():
            ok = err <= tol and (worst is None or worst <= ROW_FACTOR * tol)
            ok_all &= ok
            rows.append(
                {
                    "kind": "verify",
                    "shape": name,
                    "tokens": case.tokens,
                    "config": config.describe(),
                    "against": against,
                    "error": err,
                    "row_error": worst,
                    "bar": tol,
                    "ok": ok,
                }
            )
            print(
                f"verify {name:12s} T={case.tokens:5d} vs {against:9s} err {err:.2e} "
                f"row {'-' if worst is None else f'{worst:.2e}':>8s} bar {tol:.1e}  "
                f"{'ok' if ok else 'FAIL'}  [{config.describe()}]",
                flush=True,
            )
    return ok_all


def timing(dtype, tokens: int, rows: list) -> None:
    from hangs import finish
    from triton.testing import do_bench

    from mhfgen import dispatch, registry
    from mhfgen.device import sm_count
    from mhfgen.fp8 import transpose_v
    from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
    from mhfgen.variants.flash_mhf_fwd_fp8_ws import KERNEL, flash_mhf_fwd_fp8_ws
    from mhfgen.variants.flash_mhf_fwd_ws import flash_mhf_fwd_ws
    from mhfgen.verification import Case

    name, h, hkv, d, e, de = PRESET
    batch = tokens // 2048 if tokens % 2048 == 0 else 1
    case = Case(name, batch, tokens // batch, h, hkv, d, e, de)
    (q, k, u, v, r), (_, k8, u8, v8, _, scales), _ = _inputs(case, dtype)
    act = str(dtype).removeprefix("torch.")
    flops = 6 * tokens * h * e * de * d
    methods = (
        (
            "bf16 Gluon",
            "flash_mhf_fwd_ws",
            act,
            lambda c: flash_mhf_fwd_ws(q, k, u, v, r, config=c),
        ),
        (
            "W8 Triton",
            "flash_mhf_fwd",
            f"{act}_e4m3",
            lambda c: flash_mhf_fwd(q, k8, u8, v8, r, scales, config=c),
        ),
        (
            "W8A8 Gluon",
            KERNEL,
            f"{act}_e4m3",
            lambda c: flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=c),
        ),
    )
    base = None
    for label, stem, dname, call in methods:
        spec = _spec(h, hkv, d, e, de, dname)
        choice = dispatch.explain_choice(stem, spec, tokens, q.device)
        tried = [(label, choice.config, choice.source)]
        if choice.source == "nearest":  # a config tuned at other sizes: the heuristic too
            heuristic = registry.get(stem).default_config(spec, tokens, sm_count(q.device))
            tried.append((f"{label} (h)", heuristic, "heuristic"))
        for method, config, source in tried:
            finish(lambda: call(config), timeout_s=60.0)  # compile, first launch
            ms = do_bench(lambda: call(config), warmup=25, rep=100, return_mode="median")
            tflops = flops / ms / 1e9
            base = tflops if base is None else base
            rows.append(
                {
                    "kind": "timing",
                    "method": method,
                    "variant": stem,
                    "dtype": dname,
                    "tokens": tokens,
                    "config": config.describe(),
                    "config_source": source,
                    "ms": ms,
                    "tflops": tflops,
                    "vs_bf16": tflops / base,
                }
            )
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        transpose_v(v8)
    torch.cuda.synchronize()
    rows.append(
        {
            "kind": "v_transpose",
            "bytes": v8.numel(),
            "ms": (time.perf_counter() - t0) * 100,
        }
    )
    print()
    print(f"1.3B preset, {tokens} tokens, {act}; TFLOP/s = 6 T H I D / median time")
    print(f"{'method':16s} {'variant':22s} {'ms':>8s} {'TFLOP/s':>8s} {'vs bf16':>8s}  config")
    for row in rows:
        if row["kind"] == "timing":
            print(
                f"{row['method']:16s} {row['variant']:22s} {row['ms']:8.3f} "
                f"{row['tflops']:8.1f} {row['vs_bf16']:7.2f}x  {row['config']} "
                f"({row['config_source']})"
            )
    vt = rows[-1]
    print(
        f"V transposed copy (once per weight tensor): {vt['bytes'] / 1e6:.1f} MB, {vt['ms']:.3f} ms"
    )


def schedules(dtype, tokens: int, rows: list, matching: str = "") -> bool:
    """Check each SCHEDULES config of flash_mhf_fwd_fp8_ws (those whose label contains
    `matching`, and the default) against float64 and its emulation on the 1.3B slice,
    then time the ones that pass at `tokens` beside the bf16 Gluon forward's dispatched
    config. False when a check fails."""
    from hangs import finish
    from triton.testing import do_bench

    from mhfgen import registry
    from mhfgen.tolerances import FP8_EMULATION_BAR, relative_error, tolerance_for
    from mhfgen.variants import flash_mhf_fwd_fp8_ws as f8
    from mhfgen.variants.flash_mhf_fwd_ws import flash_mhf_fwd_ws
    from mhfgen.verification import Case

    name, b, l, h, hkv, d, e, de = SHAPES[0]
    _, (q, k8, u8, v8, r, scales), dense = _inputs(Case(name, b, l, h, hkv, d, e, de), dtype)
    ref = _reference(q, r, dense)
    bar = tolerance_for(registry.get(f8.KERNEL), q.dtype, numel=ref.numel())
    configs, ok_all = {}, True
    for label, fields in SCHEDULES.items():
        if matching not in label and fields:
            continue
        config = f8.Fp8WsConfig(**fields)
        got = finish(lambda: f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config))
        err = relative_error(got, ref)
        spec = _spec(h, hkv, d, e, de, f"{str(dtype).removeprefix('torch.')}_e4m3")
        emu = relative_error(got, f8.emulate(q, k8, u8, v8, r, scales, spec, config))
        ok = err <= bar and emu <= FP8_EMULATION_BAR
        ok_all &= ok
        if ok:
            configs[label] = config
        print(
            f"schedule {label:48s} vs float64 {err:.2e} (bar {bar:.1e}) vs emulation "
            f"{emu:.2e} (bar {FP8_EMULATION_BAR:.0e}) {'ok' if ok else 'FAIL'}",
            flush=True,
        )
    name, h, hkv, d, e, de = PRESET
    batch = tokens // 2048 if tokens % 2048 == 0 else 1
    case = Case(name, batch, tokens // batch, h, hkv, d, e, de)
    (q, k, u, v, r), (_, k8, u8, v8, _, scales), _ = _inputs(case, dtype)
    flops = 6 * tokens * h * e * de * d

    def timed(call) -> float:
        finish(call, timeout_s=60.0)
        return do_bench(call, warmup=25, rep=100, return_mode="median")

    base = timed(lambda: flash_mhf_fwd_ws(q, k, u, v, r))
    print(
        f"schedule {'bf16 Gluon forward (dispatched)':48s} {base:.3f} ms {flops / base / 1e9:.0f} TFLOP/s"
    )
    for label, config in configs.items():
        ms = timed(lambda: f8.flash_mhf_fwd_fp8_ws(q, k8, u8, v8, r, scales, config=config))
        rows.append(
            {
                "kind": "schedule",
                "schedule": label,
                "config": config.describe(),
                "tokens": tokens,
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "vs_bf16": base / ms,
            }
        )
        print(
            f"schedule {label:48s} {ms:.3f} ms {flops / ms / 1e9:.0f} TFLOP/s "
            f"{base / ms:.2f}x bf16  [{config.describe()}]",
            flush=True,
        )
    return ok_all


#: --decode: token counts; each call reads its own copy of the weights (mhfgen.bench_decode)
DECODE_TOKENS = (1, 8, 32, 64)


def _decode_weights(dtype, shape_name: str) -> tuple:
    """(16-bit spec, FP8 spec, {"dense": copies, "fp8": copies}) of a decode shape: each
    weight format's copies together pass 4x the L2 (mhfgen.graph_timing.rotation_copies),
    made once to serve every row of the shape."""
    from mhfgen.bench_decode import weight_bytes, weight_copies
    from mhfgen.graph_timing import rotation_copies

    h, hkv, d, e, de = decode_shape(shape_name)
    dt = str(dtype).removeprefix("torch.")
    dense_spec, fp8_spec = _spec(h, hkv, d, e, de, dt), _spec(h, hkv, d, e, de, f"{dt}_e4m3")
    copies_of = {
        weights: weight_copies(
            dense_spec, weights, "cuda", rotation_copies(weight_bytes(dense_spec, weights))
        )
        for weights in ("dense", "fp8")
    }
    return dense_spec, fp8_spec, copies_of


def _decode_inputs(tokens: int, h: int, d: int, e: int, dtype) -> tuple:
    """(generator, q (1, tokens, h, d) in dtype, r (1, tokens, h, e) fp32 softmax) on the
    GPU, seeded by the token count; the generator goes on for the caller's own inputs."""
    gen = torch.Generator().manual_seed(tokens)
    q = torch.randn(1, tokens, h, d, generator=gen).to("cuda", dtype)
    r = torch.softmax(torch.randn(1, tokens, h, e, generator=gen), -1).to("cuda")
    return gen, q, r


def decode(dtype, rows: list, shape_name: str = "1.3B") -> None:
    """A shape (decode_shape) at DECODE_TOKENS: per call, the median replay of a CUDA graph of
    calls on weight copies that together pass 4x the L2 (mhfgen.graph_timing.call_ms),
    for 16-bit weights (flash_mhf), FP8 weights through the weight-only flash_mhf_fwd and
    through flash_mhf_fwd_fp8_ws (each at the config the dispatcher gives that variant;
    the last also with reduce_unroll 1, with two consumers (swapped_decode_config), with
    its ticket counter reset by an atomic exchange (store_reset=False) and at its
    heuristic's unswapped split, swap_ab = 0, and that with staged_scales flipped; and
    the dispatched config with act_scale flipped), the
    16-bit split forward with each counter reset, and the speed-up of each FP8 row over the 16-bit one. Each
    weight format's copies are made once and serve every row of it."""
    from hangs import finish

    from mhfgen import dispatch, flash_mhf, registry
    from mhfgen.graph_timing import call_ms
    from mhfgen.variants import flash_mhf_fwd_fp8_ws as f8
    from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
    from mhfgen.variants.flash_mhf_fwd_fp8_ws import flash_mhf_fwd_fp8_ws

    name, (h, _, d, e, _) = shape_name, decode_shape(shape_name)
    dense_spec, fp8_spec, copies_of = _decode_weights(dtype, shape_name)
    for tokens in DECODE_TOKENS:
        _, q, r = _decode_inputs(tokens, h, d, e, dtype)
        dense_us = None
        for method, weights, stem, launch in (
            ("16-bit weights", "dense", "flash_mhf_fwd_ws", None),
            ("16-bit, store reset", "dense", "flash_mhf_fwd", flash_mhf_fwd),
            ("16-bit, exchange reset", "dense", "flash_mhf_fwd", flash_mhf_fwd),
            ("FP8 weight-only", "fp8", "flash_mhf_fwd", flash_mhf_fwd),
            ("FP8 W8A8 split", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
            ("split, loads one by one", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
            ("split, two consumers", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
            ("split, exchange reset", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
            ("W8A8 unswapped", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
            ("unswapped, staged flip", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
            ("split, act_scale flip", "fp8", "flash_mhf_fwd_fp8_ws", flash_mhf_fwd_fp8_ws),
        ):
            sets = copies_of[weights]
            if launch is None:
                config = dispatch.explain_choice("fwd", dense_spec, tokens, q.device).config
                calls = [lambda w=w: flash_mhf(q, *w, r) for w in sets]
            elif weights == "dense":  # the A/B of the split reduction's counter reset
                config = dispatch.choose_config(stem, dense_spec, tokens, q.device)
                if config.inter_splits == 1:
                    continue
                config = replace(config, store_reset="store" in method)
                calls = [lambda w=w, c=config, f=launch: f(q, *w, r, config=c) for w in sets]
            else:
                config = dispatch.choose_config(stem, fp8_spec, tokens, q.device)
                sms = torch.cuda.get_device_properties(q.device).multi_processor_count
                if "one by one" in method:  # the A/B of the split reduction's loads
                    config = replace(config, reduce_unroll=1)
                if "two consumers" in method:  # the A/B of one consumer a weight tile
                    config = f8.swapped_decode_config(fp8_spec, tokens, sms, consumers=2)
                    why = registry.get(f8.KERNEL).prune_reason(fp8_spec, config, tokens, sms)
                    if why:
                        print(f"decode {name} T={tokens:3d} {method}: {why}")
                        continue
                if "unswapped" in method:  # the A/B of the swapped-operand schedule
                    config = f8.default_config(fp8_spec, tokens, sms, swapped=False)
                if "exchange" in method:  # the A/B of the split reduction's counter reset
                    config = replace(config, store_reset=False)
                if "staged flip" in method:  # the A/B of where the loop reads its scales
                    config = replace(config, staged_scales=not config.staged_scales)
                if "act_scale flip" in method:  # the A/B of the activations' scale
                    flip = {"running": "bound", "bound": "running"}[config.act_scale]
                    config = replace(config, act_scale=flip)
                calls = [
                    lambda w=w, c=config, f=launch: f(q, *w[:3], r, w[3], config=c) for w in sets
                ]
            with torch.no_grad():
                us = finish(lambda c=calls: call_ms(c)) * 1e3
            dense_us = us if dense_us is None else dense_us
            rows.append(
                {
                    "kind": "decode",
                    "shape": name,
                    "tokens": tokens,
                    "method": method,
                    "config": config.describe(),
                    "us": round(us, 2),
                    "speedup": round(dense_us / us, 2),
                }
            )
            print(
                f"decode {name} T={tokens:3d} {method:22s} {us:7.2f} us  "
                f"{dense_us / us:4.2f}x  [{config.describe()}]",
                flush=True,
            )
    del copies_of, sets, calls
    torch.cuda.empty_cache()


def pdl_ab(dtype, rows: list, shape_name: str = "1.3B") -> bool:
    """Item 5 of the module doc on one shape: returns whether every pdl output equalled
    the plain launch's bitwise."""
    from hangs import finish

    from mhfgen import dispatch, flash_mhf
    from mhfgen.graph_timing import call_ms
    from mhfgen.norm_router import norm_router
    from mhfgen.variants.flash_mhf_fwd import flash_mhf_fwd
    from mhfgen.variants.flash_mhf_fwd_fp8_ws import flash_mhf_fwd_fp8_ws

    name, (h, _, d, e, _) = shape_name, decode_shape(shape_name)
    dense_spec, fp8_spec, copies_of = _decode_weights(dtype, shape_name)

    def dense_call(w, c, qq, rr):
        return flash_mhf(qq, *w, rr) if c is None else flash_mhf_fwd(qq, *w, rr, config=c)

    def fp8_call(w, c, qq, rr):
        return flash_mhf_fwd_fp8_ws(qq, *w[:3], rr, w[3], config=c)

    def same_outputs(call, w, a, b, qq, rr):
        """Whether configs a and b give bitwise the same output on weights w."""
        with torch.no_grad():
            return torch.equal(call(w, a, qq, rr), call(w, b, qq, rr))

    ok = True
    for tokens in DECODE_TOKENS:
        gen, q, r = _decode_inputs(tokens, h, d, e, dtype)
        x = torch.randn(tokens, h * d, generator=gen).to("cuda", torch.bfloat16)
        gemm_w = (torch.randn(h * d, h * d, generator=gen) * 0.02).to("cuda", torch.bfloat16)
        norm_w = torch.ones(h, d, device="cuda")
        router_w = (torch.randn(h, d, e, generator=gen) * 0.1).to("cuda")
        fp8 = dispatch.choose_config("flash_mhf_fwd_fp8_ws", fp8_spec, tokens, q.device)
        if not fp8.swap_ab:
            print(f"pdl {name} T={tokens:3d}: the dispatched FP8 config is not swapped")
            continue
        flipped = replace(fp8, pdl=not fp8.pdl)
        bitwise = {
            "dense": True,
            "fp8": same_outputs(fp8_call, copies_of["fp8"][0], fp8, flipped, q, r),
        }
        # (label, config, weights, call of (weights, config, q, r)): the 16-bit dispatched
        # forward (config None), with pdl where flash_mhf_fwd runs it without, then FP8
        methods = [("16-bit weights", None, "dense", dense_call)]
        dense = dispatch.explain_choice("fwd", dense_spec, tokens, q.device)
        if dense.variant == "flash_mhf_fwd" and not dense.config.pdl:
            dense_pdl = replace(dense.config, pdl=True)
            methods.append(("16-bit pdl on", dense_pdl, "dense", dense_call))
            wd = copies_of["dense"][0]
            bitwise["dense"] = same_outputs(dense_call, wd, dense.config, dense_pdl, q, r)
        ok &= bitwise["dense"] and bitwise["fp8"]
        methods += [
            ("FP8 dispatched", fp8, "fp8", fp8_call),
            (f"FP8 pdl {'off' if fp8.pdl else 'on'}", flipped, "fp8", fp8_call),
        ]
        base = {}
        for method, config, weights, call in methods:
            fs = [lambda qq, rr, w=w, c=config, f=call: f(w, c, qq, rr) for w in copies_of[weights]]
            for between in ("", "GEMM", "router"):
                if between == "GEMM":
                    calls = [lambda f=f: (torch.mm(x, gemm_w), f(q, r)) for f in fs]
                elif between == "router":
                    calls = [lambda f=f: f(*norm_router(q, norm_w, router_w)) for f in fs]
                else:
                    calls = [lambda f=f: f(q, r) for f in fs]
                with torch.no_grad():
                    us = finish(lambda c=calls: call_ms(c)) * 1e3
                base.setdefault(between, us)
                label = method + (f", {between} between" if between else "")
                described = config.describe() if config else "dispatched"
                rows.append(
                    {
                        "kind": "pdl",
                        "shape": name,
                        "tokens": tokens,
                        "method": label,
                        "config": described,
                        "us": round(us, 2),
                        "speedup": round(base[between] / us, 2),
                        "bitwise": bitwise[weights],
                    }
                )
                print(
                    f"pdl {name} T={tokens:3d} {label:36s} {us:7.2f} us  "
                    f"{base[between] / us:4.2f}x  [{described}]",
                    flush=True,
                )
        for method, call, described in (
            (
                "GEMM alone",
                lambda: torch.mm(x, gemm_w),
                f"({tokens}, {h * d}) @ ({h * d}, {h * d})",
            ),
            ("router alone", lambda: norm_router(q, norm_w, router_w), f"H{h} D{d} E{e}"),
        ):
            with torch.no_grad():
                us = call_ms([call] * 32) * 1e3
            rows.append(
                {
                    "kind": "pdl",
                    "shape": name,
                    "tokens": tokens,
                    "method": method,
                    "config": described,
                    "us": round(us, 2),
                }
            )
            print(f"pdl {name} T={tokens:3d} {method:36s} {us:7.2f} us", flush=True)
    del copies_of
    torch.cuda.empty_cache()
    return ok


def main(argv=None) -> int:
    args = _args(argv)
    try:
        for name in args.decode_shapes.split(","):
            decode_shape(name)
    except ValueError as exc:
        print(f"--decode-shapes: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        print("fp8_fwd_check needs an sm90 (Hopper) CUDA GPU", file=sys.stderr)
        return 2
    import triton
    from hangs import Hang

    dtype = getattr(torch, args.dtype)
    rows: list = []
    gpu = torch.cuda.get_device_name()
    print(f"{gpu} torch {torch.__version__} triton {triton.__version__}", flush=True)
    ok, status = True, 0
    try:
        if not args.skip_verify:
            ok = verify(dtype, rows)
        if not args.skip_timing:
            timing(dtype, args.tokens, rows)
        if args.schedules:
            ok &= schedules(dtype, args.tokens, rows, args.schedules_matching)
        if args.decode:
            for name in args.decode_shapes.split(","):
                decode(dtype, rows, name)
        if args.pdl:
            for name in args.decode_shapes.split(","):
                ok &= pdl_ab(dtype, rows, name)
    except Hang as exc:
        print(f"HANG: {exc}", file=sys.stderr)
        ok, status = False, 2
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "triton": triton.__version__,
                    "dtype": args.dtype,
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                    "ok": ok,
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )
    print("all checks pass" if ok else "CHECKS FAILED", flush=True)
    return status or (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
