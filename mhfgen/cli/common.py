"""What the commands share: their parsers' registration (add_command) and the problem
arguments (heads, head_dim, ... or --preset)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..presets import DTYPE_NAMES, FP8_DTYPE_NAMES, PRESETS
from . import CommandError

if TYPE_CHECKING:
    from ..spec import KernelSpec


def add_command(sub, name: str, handler, **options) -> argparse.ArgumentParser:
    """The parser of subcommand `name` (`options`: add_parser's, help, description, ...),
    whose parsed arguments run `handler(args)`."""
    p = sub.add_parser(name, **options)
    p.set_defaults(handler=handler)
    return p


def add_problem_args(p: argparse.ArgumentParser, tokens: int = 16384) -> None:
    g = p.add_argument_group("problem")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a reference problem (sets heads, head-dim, intermediate, experts)",
    )
    g.add_argument("--heads", type=int, default=None, help="query heads H (default 8)")
    g.add_argument("--kv-heads", type=int, default=None, help="key/up/value heads Hkv (default H)")
    g.add_argument("--head-dim", type=int, default=None, help="head width D (default 128)")
    g.add_argument(
        "--intermediate", type=int, default=None, help="intermediate size I per head (default 2048)"
    )
    g.add_argument("--experts", type=int, default=None, help="sub-networks E (default 8)")
    g.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES + FP8_DTYPE_NAMES),
        default="bfloat16",
        help="dtype of q, k, u, v, o (default bfloat16); bfloat16_e4m3/float16_e4m3: "
        "activations in that dtype with FP8 (e4m3) expert weights, forward only",
    )
    g.add_argument("--tokens", type=int, default=tokens, help=f"tokens B*L (default {tokens})")


def tokens_flag(value, flag: str = "--tokens") -> int:
    """`value` if it is a token count (mhfgen.config_fields.token_count), else a
    CommandError naming `flag`."""
    from ..config_fields import token_count

    try:
        return token_count(value, flag)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def problem_from_args(args) -> dict:
    """heads, kv_heads, head_dim, intermediate, experts, expert_dim from the flags.
    Sizes and --tokens are at least 1 and at most what the tuning database stores (sizes
    64-bit integers, tokens mhfgen.tuning.db.MAX_TOKENS with their bucket), so that an
    absurd value is one line, not an overflow deep in a lookup; `tune` bounds tokens
    further (mhfgen.cli.tune.MAX_TUNE_TOKENS)."""
    from ..config_fields import INT64_MAX
    from ..tuning.db import MAX_TOKENS

    preset = PRESETS[args.preset] if args.preset else None

    def size(flag: str, given, default: int) -> int:
        if given is None:
            return default
        if given < 1:
            raise CommandError(f"--{flag} must be >= 1, got {given}")
        if given > INT64_MAX:
            raise CommandError(f"--{flag} must be at most {INT64_MAX} (2**63 - 1), got {given}")
        return given

    heads = size("heads", args.heads, preset.heads if preset else 8)
    head_dim = size("head-dim", args.head_dim, preset.head_dim if preset else 128)
    intermediate = size("intermediate", args.intermediate, preset.intermediate if preset else 2048)
    experts = size("experts", args.experts, preset.experts if preset else 8)
    kv_heads = size("kv-heads", args.kv_heads, heads)
    if intermediate % experts:
        raise CommandError(
            f"--intermediate ({intermediate}) must be divisible by --experts ({experts})"
        )
    tokens_flag(args.tokens)
    if args.tokens > MAX_TOKENS:
        raise CommandError(f"--tokens must be at most {MAX_TOKENS} (2**62), got {args.tokens}")
    return dict(
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=intermediate,
        experts=experts,
        expert_dim=intermediate // experts,
    )


def spec_from_args(args, target: str | None = None) -> KernelSpec:
    """The KernelSpec of the flags, for `target` (default: this machine's)."""
    import torch

    from ..device import target as device_target
    from ..spec import KernelSpec

    p = problem_from_args(args)
    if target is None:
        target = device_target(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return KernelSpec(
            p["heads"],
            p["kv_heads"],
            p["head_dim"],
            p["experts"],
            p["expert_dim"],
            args.dtype,
            target,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
