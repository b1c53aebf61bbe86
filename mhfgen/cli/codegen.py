"""`mhfgen codegen`: print the generated Triton source for a spec and a config."""
from __future__ import annotations

import json

from .common import add_problem_args, spec_from_args
from . import CommandError


def register(sub) -> None:
    p = sub.add_parser("codegen", help="print the generated Triton source of a kernel",
                       description="Render a kernel template for a spec and a launch config "
                                   "and print the Triton source mhfgen would compile.")
    p.add_argument("--kernel", default="flash_mhf_fwd",
                   choices=("flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv"))
    add_problem_args(p)
    p.add_argument("--target", default=None,
                   help="'sm90', 'sm80', ... or 'interpreter' (default: this machine's)")
    p.add_argument("--config", default=None,
                   help="LaunchConfig as JSON; fields left out take their defaults, "
                        "e.g. '{\"block_m\": 64, \"block_n\": 32}' "
                        "(default: the built-in heuristic for --tokens)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .. import codegen
    from ..heuristics import default_config
    from ..spec import LaunchConfig

    spec = spec_from_args(args, target=args.target)
    if args.config:
        try:
            config = LaunchConfig.from_dict(json.loads(args.config), partial=True)
        except (ValueError, TypeError) as exc:
            raise CommandError(f"--config: {exc}") from exc
    else:
        config = default_config(args.kernel, spec, args.tokens, 132)
    try:
        print(codegen.render(args.kernel, spec, config), end="")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    return 0
