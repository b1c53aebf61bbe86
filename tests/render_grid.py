"""Render every kernel template over a broad grid of (spec, config) and compare renders.

A template refactor (macros, reordered blocks) must leave the generated code of every
(spec, config) byte for byte as it was: the tuning database keys each winner by the hash
of its code (mhfgen.codegen.code_hash), so a refactor that changed one character would
silently invalidate stored winners. The grid takes every structural branch of the three
Triton-language templates: BLOCK_N dividing De or not (flat loop / per-expert loop), tma,
prefetch_scores, warp_specialize, inter_splits > 1, head_dim as chunks or padded (D = 96,
80, 24), fp32's IEEE precision, Hkv < H with group_heads > 1, token_splits,
transpose_acc, split_grads, and the interpreter, sm80, sm90 and sm100 targets. And of the
seven Gluon templates (sm90, bf16/fp16, and the FP8-weight dtypes for the FP8 forward): every combination of the config fields their
static parameters come from (GLUON_FIELDS; the other fields are launch arguments or
constexprs and keep their defaults) over D = 128, 96, 80, 64 (head_dim chunks in the
forward), GQA and not, 1 to 22 experts, De = 256, 128, 96 (a forward weight tile past the
expert's end) and 64 (one backward tile per expert: dr stored, not added). Renders are
compared with the "# template hash:" line left out, as code_hash does.

    python tests/render_grid.py --against main     # working tree vs. main's templates
    python tests/render_grid.py --write-digests    # refresh tests/data/render_digests.json

tests/test_render_grid.py checks the working tree against the committed digests.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import itertools
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mhfgen import codegen, registry  # noqa: E402
from mhfgen.schema2 import SCHEMA2_FIELDS  # noqa: E402
from mhfgen.spec import KernelSpec  # noqa: E402

DIGESTS = REPO / "tests" / "data" / "render_digests.json"
#: the Triton-language templates the grid renders
TRITON_KERNELS = ("flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv")
#: the Gluon templates the grid renders: the config fields that change each one's code
#: (through its static_params) and the values the grid takes of them
GLUON_FIELDS: dict[str, dict[str, tuple]] = {
    "flash_mhf_fwd_ws": {
        "block_n": (64, 32),
        "consumers": (1, 2, 3),
        "group_heads": (1, 2),
        "pingpong": (False, True),
        "sigmoid": ("tanh", "exp"),
        "persistent": (False, True),
        "joint_scores": (False, True),
        "unroll_tiles": (1, 2),
    },
    "flash_mhf_fwd_fp8_ws": {
        "consumers": (1, 2),
        "group_heads": (1, 2),
        "pingpong": (False, True),
        "sigmoid": ("tanh", "exp"),
        "joint_scores": (False, True),
        "p_operand": ("shared", "registers"),
        "unroll_tiles": (1, 2),
        "inter_splits": (1, 8),
        "staged_scales": (False, True),
        "swap_ab": (0, 16),
        "reduce_unroll": (1, 8),
        "store_reset": (True, False),
        "pdl": (False, True),
    },
    "flash_mhf_bwd_dq_ws": {
        "sigmoid": ("tanh", "exp"),
        "joint_scores": (False, True),
        "wait_dq": (False, True),
        "early_scores": (False, True),
    },
    "flash_mhf_bwd_dkv_ws": {
        "split": ("tokens", "rows"),
        "joint_scores": (False, True),
        "joint_grads": (False, True),
        "sigmoid": ("tanh", "exp"),
        "token_splits": (1, 2),
    },
    "flash_mhf_bwd_dkvt_ws": {"sigmoid": ("tanh", "exp"), "token_splits": (1, 2)},
    "flash_mhf_bwd_ws": {
        "sigmoid": ("tanh", "exp"),
        "token_splits": (1, 2),
        "dq_vec": (False, True),
    },
    "flash_mhf_bwdt_ws": {
        "sigmoid": ("tanh", "exp"),
        "token_splits": (1, 2),
        "dq_vec": (False, True),
    },
}
KERNELS = TRITON_KERNELS + tuple(GLUON_FIELDS)

# (heads, kv_heads) x head_dim x (experts, expert_dim) x dtype x target
HEADS = ((4, 4), (8, 2))
HEAD_DIMS = (128, 96, 80, 24)
EXPERTS = ((4, 64), (3, 80), (2, 96))
DTYPES = ("bfloat16", "float16", "float32")
#: FP8-weight dtypes, rendered for the variants that take them (the forward)
FP8_DTYPES = ("bfloat16_e4m3", "float16_e4m3")
TARGETS = ("interpreter", "sm80", "sm90", "sm100")


# the Gluon templates' grid: sm90 only, the dtypes they take
GLUON_HEADS = ((16, 4), (8, 8))
GLUON_HEAD_DIMS = (128, 96, 80, 64)
GLUON_EXPERTS = ((1, 128), (4, 256), (22, 128), (3, 96), (8, 64))
GLUON_DTYPES = ("bfloat16", "float16")


def specs(kernel: str) -> list[KernelSpec]:
    """The grid's specs for `kernel` (a Gluon template's: those it supports)."""
    if kernel in GLUON_FIELDS:
        variant = registry.get(kernel)
        dtypes = GLUON_DTYPES + FP8_DTYPES  # each template keeps the ones it takes
        grid = itertools.product(GLUON_HEADS, GLUON_HEAD_DIMS, GLUON_EXPERTS, dtypes)
        return [
            spec
            for (h, hkv), d, (e, de), dtype in grid
            if variant.unsupported(spec := KernelSpec(h, hkv, d, e, de, dtype, "sm90")) is None
        ]
    grid = itertools.product(HEADS, HEAD_DIMS, EXPERTS, DTYPES + FP8_DTYPES, TARGETS)
    variant = registry.get(kernel)
    every = [
        KernelSpec(h, hkv, d, e, de, dtype, target) for (h, hkv), d, (e, de), dtype, target in grid
    ]
    return [s for s in every if not s.fp8_weights or variant.unsupported(s) is None]


#: fields a Gluon template's grid varies on a smaller product only: each of `values` (a
#: setting of them away from their defaults) over every combination of `over` (fields of
#: GLUON_FIELDS[kernel]), so that a field touching few branches does not multiply the grid
GLUON_BRANCHES: dict[str, dict] = {
    "flash_mhf_fwd_fp8_ws": {
        "over": (
            "consumers",
            "pingpong",
            "joint_scores",
            "unroll_tiles",
            "inter_splits",
            "staged_scales",
            "swap_ab",
            "pdl",
        ),
        "values": ({"act_scale": "running"}, {"p_buffers": 2}),
    },
}


def _branch_fields(kernel: str) -> tuple:
    """The fields GLUON_BRANCHES sets for `kernel` (none for the others)."""
    branches = GLUON_BRANCHES.get(kernel, {"values": ()})
    return tuple(sorted({k for values in branches["values"] for k in values}))


def configs(kernel: str, spec: KernelSpec) -> Iterator[registry.VariantConfig]:
    """Every combination of the fields that change `kernel`'s code (block_m, num_warps and
    num_stages are launch arguments and never do; a Gluon template's: GLUON_FIELDS)."""
    config_type = registry.get(kernel).Config
    if kernel in GLUON_FIELDS:
        fields = GLUON_FIELDS[kernel]
        for values in itertools.product(*fields.values()):
            try:
                yield config_type(**dict(zip(fields, values)))
            except ValueError:  # not a config (pingpong with one consumer, ...)
                continue
        branches = GLUON_BRANCHES.get(kernel)
        for setting in branches["values"] if branches else ():
            over = branches["over"]
            for values in itertools.product(*(fields[k] for k in over)):
                try:
                    yield config_type(**dict(zip(over, values)), **setting)
                except ValueError:
                    continue
        return
    groups = sorted({1, spec.group})
    common = itertools.product((16, 32, 64, 128), ("chunks", "pad"))
    if kernel == "flash_mhf_bwd_dkv":
        for (block_n, split), tok, tr, sg in itertools.product(
            common, (1, 2), (False, True), (False, True)
        ):
            yield config_type(
                block_n=block_n,
                head_dim_split=split,
                token_splits=tok,
                transpose_acc=tr,
                split_grads=sg,
            )
        return
    fwd = kernel == "flash_mhf_fwd"
    for (block_n, split), g, tma, ws, inter, pre in itertools.product(
        common,
        groups,
        (False, True),
        (False, True),
        (1, 2) if fwd else (1,),
        (False, True) if fwd else (False,),
    ):
        extra = {"inter_splits": inter, "prefetch_scores": pre} if fwd else {}
        # the split reduction's counter reset: a plain store, or (configs stored before
        # store_reset) an atomic exchange
        for reset in (True, False) if inter > 1 else (True,):
            yield config_type(
                block_n=block_n,
                head_dim_split=split,
                group_heads=g,
                tma=tma,
                warp_specialize=ws,
                **extra,
                **({"store_reset": reset} if fwd else {}),
            )


def config_text(kernel: str, config: registry.VariantConfig) -> str:
    """A grid config as the digests name it: for a Triton-language template its values of
    the 13 fields of schema 2 (mhfgen.schema2), the form the committed digests were written
    with (and store_reset where it is off); for a Gluon template its values of the fields
    the grid varies (GLUON_FIELDS), so that a new config field with a default leaves the
    digests as they are."""
    if kernel in GLUON_FIELDS:
        keys = (*GLUON_FIELDS[kernel], *_branch_fields(kernel))
        return json.dumps({k: getattr(config, k) for k in keys}, sort_keys=True)
    fields = {k: getattr(config, k, neutral) for k, neutral in SCHEMA2_FIELDS.items()}
    if not getattr(config, "store_reset", True):  # the exchange reset of older split configs
        fields["store_reset"] = False
    return json.dumps(fields, sort_keys=True)


def _code(source: str) -> str:
    """The generated code without its provenance lines (template path and hash)."""
    return "\n".join(
        line
        for line in source.splitlines()
        if not line.startswith(("# template hash:", codegen.PROVENANCE))
    )


@contextlib.contextmanager
def templates_from(folder: Path):
    """Render from the templates in `folder` instead of the package's."""

    def clear():
        codegen._environment.cache_clear()
        codegen.template_hash.cache_clear()

    clear()
    try:
        with mock.patch.object(registry.Variant, "template_dir", folder):
            yield
    finally:
        clear()


def render_grid(kernels=KERNELS) -> dict[tuple, str]:
    """(kernel, spec key, config json) -> generated code, for every valid grid point."""
    out = {}
    for kernel in kernels:
        for spec in specs(kernel):
            for config in configs(kernel, spec):
                try:
                    source = codegen.render(kernel, spec, config)
                except ValueError:  # the config cannot run this spec (tma on sm80, ...)
                    continue
                out[(kernel, spec.key(), config_text(kernel, config))] = _code(source)
    return out


def digests(renders: dict[tuple, str]) -> dict[str, str]:
    """One sha256 per (kernel, spec) over its configs' code, in grid order."""
    per: dict[str, hashlib._Hash] = {}
    for (kernel, spec_key, config), code in renders.items():
        h = per.setdefault(f"{kernel} {spec_key}", hashlib.sha256())
        h.update(config.encode() + b"\0" + code.encode() + b"\0")
    return {key: h.hexdigest()[:16] for key, h in per.items()}


def templates_at(rev: str, into: Path) -> Path:
    """Write the templates and search spaces of git revision `rev` into `into` (from
    mhfgen/variants/, or the top-level templates/ folder of older revisions)."""
    for folder in ("mhfgen/variants", "templates"):
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:{folder}"],
            capture_output=True,
            text=True,
        )
        if listed.returncode == 0 and ".jinja" in listed.stdout:
            break
    else:
        raise SystemExit(f"{rev} has neither mhfgen/variants/ nor templates/")
    for name in listed.stdout.split():
        if not name.endswith((".jinja", ".toml")):
            continue
        blob = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{folder}/{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (into / name).write_bytes(blob)
    return into


def compare(rev: str) -> int:
    new = render_grid()
    with tempfile.TemporaryDirectory() as tmp, templates_from(templates_at(rev, Path(tmp))):
        old = render_grid()
    if old.keys() != new.keys():
        print(f"the grid's valid points differ: {len(old)} at {rev}, {len(new)} now")
        return 1
    differ = [key for key in new if new[key] != old[key]]
    print(
        f"{len(new)} renders ({len(set(new.values()))} distinct sources) compared with {rev}: "
        f"{len(differ)} differ"
    )
    for kernel, spec_key, config in differ[:10]:
        print(f"  {kernel} {spec_key} {config}")
    if differ:
        key = differ[0]
        sys.stdout.writelines(
            difflib.unified_diff(
                old[key].splitlines(True), new[key].splitlines(True), rev, "working tree"
            )
        )
    return 1 if differ else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--against",
        metavar="REV",
        help="compare the working tree's renders with git revision REV's",
    )
    parser.add_argument(
        "--write-digests",
        action="store_true",
        help=f"write the grid's digests to {DIGESTS.relative_to(REPO)}",
    )
    args = parser.parse_args(argv)
    if args.write_digests:
        DIGESTS.parent.mkdir(exist_ok=True)
        DIGESTS.write_text(json.dumps(digests(render_grid()), indent=1, sort_keys=True) + "\n")
        print(f"wrote {DIGESTS}")
        return 0
    if not args.against:
        parser.error("give --against REV or --write-digests")
    return compare(args.against)


if __name__ == "__main__":
    sys.exit(main())
