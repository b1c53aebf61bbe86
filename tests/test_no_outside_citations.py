"""The repository cites no file outside itself: the contracts, bars and figures its code and
docs rely on are written in docs/ (docs/CONTRACTS.md, docs/PERFORMANCE.md, docs/figures/).

A citation of a project note that lives beside the checkout (a spec, anchors or style file,
or a path into a shared folder next to the repository) would point a reader at nothing in
a clone; this test fails when one reappears in code, tests, benchmarks, templates or docs.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = (
    "mhfgen",
    "tests",
    "benchmarks",
    "docs",
    "examples",
    "requirements",
    "README.md",
    "cli.py",
    "Makefile",
    "pyproject.toml",
    ".ci",
)
TEXT = {".py", ".md", ".jinja", ".toml", ".sh", ".txt", ".csv", ".json", ".cfg", ".ini", ""}
CITATION = re.compile(
    r"\b(?:SPEC|ANCHORS|STYLE)\.md\b"  # the project notes beside the repository
    r"|\bANCHORS\b"  # ... also without the suffix
    r"|(?:\.\./|/work/)shared\b"  # the shared folder next to the checkout
    r"|\bshared/(?:gpu|seed|hooks)\b"
)  # ... and its sub-folders


def _files():
    for root in ROOTS:
        path = REPO / root
        paths = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for p in paths:
            if (
                p.is_file()
                and p.suffix in TEXT
                and "__pycache__" not in p.parts
                and p != Path(__file__).resolve()
            ):
                yield p


def test_the_scan_sees_the_tree():
    names = {p.relative_to(REPO).as_posix() for p in _files()}
    assert {
        "README.md",
        "mhfgen/dispatch.py",
        "docs/CONTRACTS.md",
        "mhfgen/variants/flash_mhf_fwd.py.jinja",
        "benchmarks/bench_h200.py",
    } <= names


@pytest.mark.parametrize(
    "line,cites",
    [
        ("Contract (SPEC.md section 4).", True),
        ("the bar of ANCHORS", True),
        ("see ../shared/gpu/helion_peer/", True),
        ("a spill in shared memory", False),
        ("journal:/mnt/nfs/study.log", False),
        ("docs/CONTRACTS.md, section 4", False),
    ],
)
def test_the_pattern(line, cites):
    assert bool(CITATION.search(line)) == cites


def test_no_file_cites_a_file_outside_the_repository():
    hits = []
    for path in _files():
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if CITATION.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}")
    assert not hits, "citations of files outside the repository:\n" + "\n".join(hits)
