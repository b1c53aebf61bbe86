"""A Gluon one-pass backward on an H100/H200: correctness, then speed.

flash_mhf_bwd_ws, or flash_mhf_bwdt_ws with --variant:

    python3 benchmarks/bwd_ws_check.py [--variant flash_mhf_bwdt_ws] [--budget 500]

1. verify: its five gradients against float64 (relative Frobenius error, the bar of
   mhfgen.tolerances) in bf16 and fp16 on the 1.3B shape's slice, L = 1, L = 37 with
   Hkv < H, D = 96 with Hkv < H, E = 1 at D = 64 and Hkv < H at D = 64 (the cases the
   variant supports), for a few configs (token splits, head chunks, exp sigmoid, a deeper
   ring, the dq reductions' layout).
2. speed at 16384 tokens (--tokens) in bf16 on 1.3B, 370M, (H16, D64), 1.3B with 4 kv heads and
   128M (D = 96), the shapes the variant supports: a config sweep beside the split
   backward as dispatched and the forward as dispatched, in one process; TFLOP/s count
   12 T H I D for the backward and 18 T H I D for forward + backward; each timed config's
   gradients are checked against float64 first.
3. --diagnose: on 1.3B and (H16, D64) where the variant runs them, a few of its configs,
   and the same kernel with its dq and/or dr reductions predicated off (a measurement
   only: those gradients are then wrong and not checked), to see what the atomics cost.
Every first launch is watched for a hang (an mbarrier deadlock): a hang ends the run,
printing what was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
import triton
from hangs import Hang, finish, print_table, run_watched  # benchmarks/hangs.py, beside this script

from mhfgen import codegen, kernels, registry
from mhfgen.kernels.configs import spec_of
from mhfgen.kernels.plans import clear_plans
from mhfgen.tolerances import relative_error, tolerance
from mhfgen.validation import check_flash_mhf_inputs
from mhfgen.variants.flash_mhf_bwd_ws import BwdWsConfig
from mhfgen.variants.flash_mhf_bwdt_ws import BwdtWsConfig
from mhfgen.verification import Case, make_inputs, reference_outputs

GRADS = ("dq", "dr", "dk", "du", "dv")
VERIFY_CASES = [
    Case("1.3B-slice", 2, 300, 16, 16, 128, 22, 256),
    Case("L=1", 1, 1, 8, 8, 128, 11, 256),
    Case("L=37,Hkv<H", 1, 37, 8, 2, 128, 4, 128),
    Case("D96,Hkv<H", 2, 150, 8, 2, 96, 8, 256),
    Case("E=1,D64", 1, 200, 4, 4, 64, 1, 512),
    Case("Hkv<H,D64", 3, 100, 16, 4, 64, 11, 256),
]
#: per variant: its configs checked on every verify case
VERIFY_CONFIGS = {
    "flash_mhf_bwd_ws": {
        "default": BwdWsConfig(),
        "ts3 hc2": BwdWsConfig(token_splits=3, head_chunk=2),
        "exp s3 hc16": BwdWsConfig(sigmoid="exp", stages=3, head_chunk=16),
    },
    "flash_mhf_bwdt_ws": {
        "default": BwdtWsConfig(),
        "ts3 hc2": BwdtWsConfig(token_splits=3, head_chunk=2),
        "exp s3 v2-dq hc16": BwdtWsConfig(sigmoid="exp", stages=3, dq_vec=False, head_chunk=16),
    },
}
SPEED_SHAPES = {
    "1.3B": (16, 16, 128, 22, 256),
    "370M": (8, 8, 128, 11, 256),
    "H16D64": (16, 16, 64, 11, 256),
    "1.3B-gqa4": (16, 4, 128, 22, 256),
    "128M": (8, 8, 96, 8, 256),
}


def backward(variant: str):
    """The variant's launcher: (q, k, u, v, r, do, config=) -> (dq, dr, dk, du, dv)."""
    module = importlib.import_module(type(registry.get(variant)).__module__)
    return getattr(module, variant)


def runs(variant: str, inputs) -> bool:
    """Whether the variant supports the problem of these inputs."""
    q, k = inputs[0], inputs[1]
    spec = spec_of(check_flash_mhf_inputs(*inputs[:5]), q, k)
    return registry.get(variant).unsupported(spec) is None


def errors(out, ref) -> float:
    return max(relative_error(o, ref[g]) for g, o in zip(GRADS, out))


def verify(rows, variant):
    run = backward(variant)
    for dtype in (torch.bfloat16, torch.float16):
        bar = tolerance(dtype, grad=True)
        for case in VERIFY_CASES:
            inputs = make_inputs(case, dtype, "cuda", seed=1)
            if not runs(variant, inputs):
                continue
            ref = reference_outputs(*inputs)
            for name, config in VERIFY_CONFIGS[variant].items():
                label = f"{str(dtype)[6:]} {case.name} {name}"
                try:
                    err = errors(finish(lambda: run(*inputs, config=config)), ref)
                    rows.append(("verify", label, f"{err:.2e}", "ok" if err <= bar else "FAIL"))
                except Hang:
                    rows.append(("verify", label, "-", "HANG"))
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing config is a row
                    rows.append(
                        (
                            "verify",
                            label,
                            "-",
                            f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:90]}",
                        )
                    )
                print(*rows[-1], flush=True)


def sweep_configs(variant, name):
    if variant == "flash_mhf_bwdt_ws":
        base = [BwdtWsConfig()]
        if name == "1.3B":  # the knobs beside the default on the headline shape only
            base += [
                BwdtWsConfig(dq_vec=False),
                BwdtWsConfig(dq_vec=False, stages=3),
                BwdtWsConfig(sigmoid="exp"),
                BwdtWsConfig(consumer_regs=232),
            ]
    else:
        base = [BwdWsConfig()]
        if name == "1.3B":
            base += [
                BwdWsConfig(stages=3),
                BwdWsConfig(grads_regs=160),
                BwdWsConfig(sigmoid="exp"),
            ]
    out = []
    for c in base:
        for hc, ts in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (16, 1)):
            out.append(dataclasses.replace(c, head_chunk=hc, token_splits=ts))
    if name == "H16D64" and variant == "flash_mhf_bwd_ws":
        out += [dataclasses.replace(c, block_m=64) for c in out[:6]]
    return out


def speed_case(name: str, tokens: int) -> Case:
    """The speed shape `name` at `tokens` tokens: sequences of 2048 where they divide."""
    H, Hkv, D, E, De = SPEED_SHAPES[name]
    batch, seqlen = (tokens // 2048, 2048) if tokens % 2048 == 0 else (1, tokens)
    return Case(name, batch, seqlen, H, Hkv, D, E, De)


def speed(rows, shapes, variant, tokens, records):
    """Time the split backward as dispatched and each of the variant's sweep configs on
    `shapes`; a row each, and a record each (shape, what, ms, split_ms, fwd_ms, unit)."""
    run = backward(variant)
    for name in shapes:
        case = speed_case(name, tokens)
        H, D, E, De = case.heads, case.head_dim, case.experts, case.expert_dim
        inputs = make_inputs(case, torch.bfloat16, "cuda")
        if not runs(variant, inputs):
            continue
        unit = 2 * case.tokens * H * E * De * D  # one GEMM unit
        ref = reference_outputs(*inputs)
        bar = tolerance(torch.bfloat16, grad=True)
        bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=40)  # noqa: E731
        t_fwd = bench(lambda: kernels.forward(*inputs[:5]))
        t_split = bench(lambda: kernels.backward(*inputs))
        rows.append(
            (
                "speed",
                f"{name} split (dispatched)",
                f"{t_split:.3f} ms",
                f"bwd {6 * unit / t_split / 1e9:.0f} fwd+bwd "
                f"{9 * unit / (t_fwd + t_split) / 1e9:.0f} (fwd {t_fwd:.3f} ms)",
            )
        )
        print(*rows[-1], flush=True)

        def record(what, ms):
            records.append(
                dict(shape=name, what=what, ms=ms, split_ms=t_split, fwd_ms=t_fwd, unit=unit)
            )

        record("split pair (dispatched)", t_split)
        for config in sweep_configs(variant, name):
            label = f"{name} {config.describe()}"
            try:
                err = errors(finish(lambda: run(*inputs, config=config)), ref)
                if err > bar:
                    rows.append(("speed", label, "-", f"WRONG {err:.2e}"))
                else:
                    t = bench(lambda: run(*inputs, config=config))
                    record(config.describe(), t)
                    rows.append(
                        (
                            "speed",
                            label,
                            f"{t:.3f} ms",
                            f"bwd {6 * unit / t / 1e9:.0f} fwd+bwd "
                            f"{9 * unit / (t_fwd + t) / 1e9:.0f} err {err:.2e}",
                        )
                    )
            except Hang:
                rows.append(("speed", label, "-", "HANG"))
                raise
            except Exception as exc:  # noqa: BLE001
                rows.append(
                    (
                        "speed",
                        label,
                        "-",
                        f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:90]}",
                    )
                )
            print(*rows[-1], flush=True)


#: per variant: (text, replacement) that predicate its dq and its dr reductions off
NO_DQ = {
    "flash_mhf_bwd_ws": ("_red_add_v4(ptrs, dqt, ok)", "_red_add_v4(ptrs, dqt, ok * 0)"),
    "flash_mhf_bwdt_ws": (
        "_red_add_v4(ptrs, dq, ok.to(gl.int32))",
        "_red_add_v4(ptrs, dq, ok.to(gl.int32) * 0)",
    ),
}
NO_DR = {
    "flash_mhf_bwd_ws": (
        'gl.atomic_add(dr_ptrs, dr_part, mask=ok, sem="relaxed")',
        'gl.atomic_add(dr_ptrs, dr_part, mask=ok & (toks < 0), sem="relaxed")',
    ),
    "flash_mhf_bwdt_ws": (
        'gl.atomic_add(DR + dr_off, dr_part, mask=dr_ok, sem="relaxed")',
        'gl.atomic_add(DR + dr_off, dr_part, mask=dr_ok & (dr_off < 0), sem="relaxed")',
    ),
}
#: per variant: its configs beside the default in the diagnosis, the first (with vector dq
#: reductions) also run with its reductions predicated off
DIAGNOSE_CONFIGS = {
    "flash_mhf_bwd_ws": {
        "vec exp hc16": BwdWsConfig(dq_vec=True, sigmoid="exp", head_chunk=16),
        "default hc16": BwdWsConfig(head_chunk=16),
        "vec hc16": BwdWsConfig(dq_vec=True, head_chunk=16),
        "vec exp hc1 ts3": BwdWsConfig(dq_vec=True, sigmoid="exp", token_splits=3),
        "vec exp hc2 ts2": BwdWsConfig(dq_vec=True, sigmoid="exp", head_chunk=2, token_splits=2),
    },
    "flash_mhf_bwdt_ws": {
        "vec hc16": BwdtWsConfig(head_chunk=16),
        "v2-dq hc16": BwdtWsConfig(dq_vec=False, head_chunk=16),
        "vec hc1 ts3": BwdtWsConfig(token_splits=3),
        "vec hc2 ts2": BwdtWsConfig(head_chunk=2, token_splits=2),
    },
}


def patched_loader(variant, replacements, real):
    """A codegen.load_kernel whose `variant` source has `replacements` (`real` loads every
    other kernel)."""

    def load(kernel, spec, config, entry=None):
        if kernel != variant:
            return real(kernel, spec, config, entry)
        src = codegen.render(variant, spec, config)
        for old, new in replacements:
            assert old in src, old
            src = src.replace(old, new)
        name = "diag_" + hashlib.sha1(src.encode()).hexdigest()[:12]
        path = Path(tempfile.mkdtemp()) / f"{name}.py"
        path.write_text(src)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return getattr(module, f"{variant}_kernel")

    return load


def diagnose(rows, variant, tokens, records):
    """Time a few of the variant's configs, and the first with its dq and/or dr reductions
    predicated off; a row and a record (shape, what, ms, unit) each."""
    real, run = codegen.load_kernel, backward(variant)
    configs = DIAGNOSE_CONFIGS[variant]
    first, vec = next(iter(configs.items()))
    no_dq, no_dr = NO_DQ[variant], NO_DR[variant]
    trials = [(label, config, ()) for label, config in configs.items()] + [
        (f"{first}, no dq reductions", vec, (no_dq,)),
        (f"{first}, no dr reductions", vec, (no_dr,)),
        (f"{first}, neither", vec, (no_dq, no_dr)),
    ]
    for name in ("1.3B", "H16D64"):
        case = speed_case(name, tokens)
        H, D, E, De = case.heads, case.head_dim, case.experts, case.expert_dim
        inputs = make_inputs(case, torch.bfloat16, "cuda")
        if not runs(variant, inputs):
            continue
        unit = 2 * case.tokens * H * E * De * D
        for label, config, patch in trials:
            codegen.load_kernel = patched_loader(variant, patch, real) if patch else real
            clear_plans()
            try:
                finish(lambda: run(*inputs, config=config))
                t = triton.testing.do_bench(lambda: run(*inputs, config=config), warmup=10, rep=40)
                records.append(dict(shape=name, what=label, ms=t, unit=unit, diagnose=True))
                rows.append(
                    (
                        "diagnose",
                        f"{name} {label}",
                        f"{t:.3f} ms",
                        f"bwd {6 * unit / t / 1e9:.0f}, executed {8 * unit / t / 1e9:.0f}",
                    )
                )
            except Hang:
                rows.append(("diagnose", f"{name} {label}", "-", "HANG"))
                raise
            except Exception as exc:  # noqa: BLE001
                rows.append(
                    (
                        "diagnose",
                        f"{name} {label}",
                        "-",
                        f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:90]}",
                    )
                )
            print(*rows[-1], flush=True)
    codegen.load_kernel = real
    clear_plans()


def results_fragment(gpu, variant, tokens, verified, records, command) -> dict:
    """The run's figures as a results fragment (benchmarks/render_performance.py's format;
    add it with --add-tables): table one-pass-<variant>-<tokens> of the timed configs
    beside the split pair (TFLOP/s counting 12 T H I D for the backward and 18 T H I D for
    forward + backward; ratio: the split pair's backward time over the row's), and
    with --diagnose table one-pass-<variant>-<tokens>-diagnose (the backward's TFLOP/s)."""
    import datetime

    def row(r, metric, value):
        return {
            "row": f"{r['shape']}, {r['what']}",
            "metric": metric,
            "value": round(value),
            "unit": "TFLOP/s",
        }

    base = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": command,
        "row_label": "shape, backward",
    }
    speed_rows, diag_rows = [], []
    for r in records:
        bwd = 6 * r["unit"] / r["ms"] / 1e9
        if r.get("diagnose"):
            diag_rows.append(row(r, "backward", bwd))
            continue
        total = 9 * r["unit"] / (r["fwd_ms"] + r["ms"]) / 1e9
        speed_rows += [
            {**row(r, "backward", bwd), "ratio": round(r["split_ms"] / r["ms"], 2)},
            row(r, "forward + backward", total),
        ]
    checked = (
        f" Verify: {verified[0]} of {verified[1]} gradient checks within the bar."
        if verified
        else ""
    )
    tables = {}
    if speed_rows:
        tables[f"one-pass-{variant}-{tokens}"] = {
            **base,
            "title": f"The one-pass backward `{variant}` beside the split pair as dispatched, "
            f"bf16, {tokens} tokens; every timed config's gradients checked against float64 "
            f"first.{checked}",
            "ratio": "the split pair's backward time over the row's (above 1: faster)",
            "rows": speed_rows,
        }
    if diag_rows:
        tables[f"one-pass-{variant}-{tokens}-diagnose"] = {
            **base,
            "title": f"`{variant}` with its dq and/or dr reductions predicated off (their "
            f"gradients then wrong, not checked), bf16, {tokens} tokens.{checked}",
            "rows": diag_rows,
        }
    return {"format": "mhfgen-results/1", "gpu": gpu, "tables": tables}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant",
        choices=sorted(VERIFY_CONFIGS),
        default="flash_mhf_bwd_ws",
        help="the one-pass variant to check (default flash_mhf_bwd_ws)",
    )
    parser.add_argument("--budget", type=float, default=500, help="seconds before the watchdog")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument(
        "--shapes",
        default="1.3B,370M,H16D64,1.3B-gqa4,128M",
        help="speed shapes ('' for none; those the variant does not support are skipped)",
    )
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument(
        "--tokens",
        type=int,
        default=16384,
        help="tokens of the speed and diagnose shapes (default 16384; at 2048 the workspace "
        "budget lets a launch take more kv heads)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the figures as a results fragment (add it to benchmarks/results "
        "with render_performance.py --add-tables FILE); written even after a hang",
    )
    args = parser.parse_args()
    records: list[dict] = []

    def steps(rows):
        if not args.skip_verify:
            verify(rows, args.variant)
        if args.diagnose:
            diagnose(rows, args.variant, args.tokens, records)
        speed(rows, [s for s in args.shapes.split(",") if s], args.variant, args.tokens, records)

    def report(rows, t0):
        """The table, and with --json the fragment (also after a hang or the watchdog)."""
        if args.json:
            checks = [r for r in rows if r[0] == "verify"]
            verified = (sum(r[3] == "ok" for r in checks), len(checks)) if checks else None
            argv = [f"OUT/{args.json.name}" if a == str(args.json) else a for a in sys.argv[1:]]
            command = "python3 benchmarks/bwd_ws_check.py " + " ".join(argv)
            fragment = results_fragment(
                torch.cuda.get_device_name(), args.variant, args.tokens, verified, records, command
            )
            args.json.write_text(json.dumps(fragment, indent=1) + "\n")
        print_table(rows, t0)

    run_watched(steps, args.budget, report)


if __name__ == "__main__":
    main()
