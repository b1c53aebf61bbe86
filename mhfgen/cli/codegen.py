"""`mhfgen codegen`: print the generated Triton source for a spec and a config."""

from __future__ import annotations

import json

from . import CommandError
from .common import add_command, add_problem_args, spec_from_args


def register(sub) -> None:
    p = add_command(
        sub,
        "codegen",
        run,
        help="print the generated Triton source of a kernel",
        description="Render a kernel template for a spec and a launch config "
        "and print the Triton source mhfgen would compile.",
    )
    p.add_argument(
        "--kernel",
        default=None,
        help="the kernel variant's stem (default: the Triton-language forward, "
        "flash_mhf_fwd; `--kernel list` lists them)",
    )
    add_problem_args(p)
    p.add_argument(
        "--target",
        default=None,
        help="'sm90', 'sm80', ... or 'interpreter' (default: this machine's)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="the variant's config as JSON; fields left out take their defaults, "
        'e.g. \'{"block_m": 64, "block_n": 32}\' '
        "(default: the built-in heuristic for --tokens)",
    )


def run(args) -> int:
    from .. import codegen, registry

    if args.kernel == "list":
        for v in registry.all_variants():
            print(
                f"{v.stem}  op {v.op}, {v.family}, targets "
                f"{', '.join(v.targets) if v.targets else 'all'}, {', '.join(v.dtypes)}"
            )
        return 0
    try:
        variant = (
            registry.get(args.kernel)
            if args.kernel
            # a forward that runs anywhere
            else next(v for v in registry.variants_for("fwd") if not v.needs_gpu)
        )
    except registry.RegistryError as exc:
        raise CommandError(f"--kernel: {exc}") from exc
    spec = spec_from_args(args, target=args.target)
    if args.config:
        try:
            data = json.loads(args.config)
        except json.JSONDecodeError as exc:
            raise CommandError(
                f"--config is not JSON ({exc.msg} at character {exc.pos + 1}); "
                f"give a JSON object, e.g. --config "
                f'\'{{"block_m": 64, "block_n": 32}}\''
            ) from None
        except RecursionError:
            raise CommandError("--config is not a config: JSON nested too deeply") from None
        try:
            config = variant.config_from_dict(data, partial=True)
        except (ValueError, TypeError) as exc:
            raise CommandError(f"--config: {exc}") from exc
    else:
        reason = variant.unsupported(spec, args.tokens)
        if reason and not (variant.needs_gpu and spec.target == "interpreter"):
            raise CommandError(reason)
        config = variant.default_config(spec, args.tokens, 132)
    try:
        print(codegen.render(variant.stem, spec, config), end="")
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    return 0
