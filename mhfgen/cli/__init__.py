"""The `mhfgen` command line. Each command lives in its own module with a
`register(subparsers)` function that adds its parser and sets `handler`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..version import __version__

#: command modules, in the order `mhfgen --help` lists them
COMMANDS = ("tune", "dbcmds", "verify", "bench", "codegen", "doctor")


class CommandError(Exception):
    """An error the CLI reports as one line and exit status 2 (bad input, bad file)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mhfgen",
        description="Generated, autotuned Triton kernels for the Flash Multi-Head FFN.",
    )
    parser.add_argument("--version", action="version", version=f"mhfgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:  # a command not written yet is not shown
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (0 ok, 1 a failed check or tune, 2 bad input, 130
    interrupted, 141 stdout closed by its reader), through sys.exit when argv is None."""
    try:
        code = _main(argv)
    except BrokenPipeError:  # while argparse printed --help or an error
        code = _stdout_closed()
    if argv is None:
        sys.exit(code or 0)
    return code or 0


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader that left shows here (BrokenPipeError, see main)
    except CommandError as exc:
        print(f"mhfgen {args.command}: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"mhfgen {args.command}: interrupted", file=sys.stderr)
        code = 130
    return code


def _stdout_closed() -> int:
    """`mhfgen list | head -1`: the reader left. Stop quietly, as `cat` does: point stdout
    at /dev/null so that the interpreter's final flush does not raise again, and exit
    with the status of SIGPIPE (128 + 13)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (captured): nothing to do
        pass
    return 141
