"""What the commands print: text tables (through tabulate) and `--json` documents.

`--json` on list, show, doctor and verify: with no file (or '-') the command writes one
JSON document to stdout instead of its text (verify's per-case lines, progress, go to
stderr); `--json FILE` writes the document to FILE beside the usual text. Each document
has a "format" key naming it and its version ("mhfgen-list/1", ...); docs/SCRIPTING.md
lists every key.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence

from . import CommandError


def printable(text: str) -> str:
    """`text` with every non-printable character but the newline written as its Python
    escape (ESC as \\x1b): a value read from a database or an imported file never
    drives the terminal (colours, cursor moves, a retitled window)."""
    return "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode()
        for c in str(text)
    )


def table(
    header: Sequence[str], rows: Sequence[Sequence], indent: str = "", numalign: str = "right"
) -> str:
    """An aligned text table (tabulate's 'simple' format: a header, a rule of dashes,
    one line per row), each line prefixed by `indent`. Cells are printed as given (str()),
    non-printable characters escaped (printable)."""
    from tabulate import tabulate

    if not rows:
        rows = [["" for _ in header]]
    text = tabulate(
        [[("" if c is None else printable(c)) for c in row] for row in rows],
        headers=list(header),
        tablefmt="simple",
        disable_numparse=True,
        numalign=numalign,
        stralign="left",
    )
    return "\n".join((indent + line).rstrip() for line in text.splitlines())


def key_values(rows: Sequence[tuple[str, object]], indent: str = "") -> str:
    """Two columns, keys and values, no header (doctor's report)."""
    from tabulate import tabulate

    text = tabulate(
        [(k, "" if v is None else str(v)) for k, v in rows], tablefmt="plain", disable_numparse=True
    )
    return "\n".join((indent + line).rstrip() for line in text.splitlines())


def add_json_arg(p, what: str) -> None:
    """--json [FILE]: the command's JSON document (format `what`) to stdout or FILE."""
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help=f"write the result as a JSON document ('{what}', keys in "
        f"docs/SCRIPTING.md): to stdout instead of the text with no FILE "
        f"or '-', else to FILE as well as the text",
    )


def json_to_stdout(args) -> bool:
    """Whether --json sends the document to stdout (so text must not go there)."""
    return getattr(args, "json", None) == "-"


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


def text_stream(args, progress: bool = False):
    """Where the command's text goes: stdout, or where its JSON goes to stdout nowhere
    (stderr for `progress` text)."""
    if not json_to_stdout(args):
        return sys.stdout
    return sys.stderr if progress else _Discard()


def emit_json(args, doc: dict) -> None:
    """Write `doc` where --json says (nothing without --json)."""
    target = getattr(args, "json", None)
    if target is None:
        return
    text = json.dumps(doc, indent=1, default=str) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(target, "w") as f:
            f.write(text)
    except OSError as exc:
        raise CommandError(f"--json {target}: {exc.strerror or exc}") from exc
