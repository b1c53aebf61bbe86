"""The layers of docs/ARCHITECTURE.md: the runtime reaches the tuner only through the
tune-on-miss hook, and no module of mhfgen imports itself back through others."""

from __future__ import annotations

import subprocess
import sys

import torch

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on
from mhfgen import record
from mhfgen.spec import KernelSpec
from mhfgen.tuning.lookup import Choice

SPEC = KernelSpec(2, 2, 16, 2, 16, "float32", "interpreter")
CPU = torch.device("cpu")


def test_on_miss_calls_the_registered_tuner_only_when_switched_on(monkeypatch):
    calls = []
    tuned = Choice(None, "exact", "user", 7, "flash_mhf_fwd")

    def fake(kernel, spec, tokens, device):
        calls.append((kernel, spec, tokens, device))
        return tuned

    monkeypatch.delenv(record.RECORD_ENV, raising=False)
    monkeypatch.setattr(record, "_miss_tuner", None)
    record.register_miss_tuner(fake)
    fallback = Choice(None, "heuristic", variant="flash_mhf_fwd")
    monkeypatch.delenv(record.TUNE_ON_MISS_ENV, raising=False)
    assert record.on_miss("fwd", SPEC, 7, CPU, fallback) is fallback and not calls
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "1")
    assert record.on_miss("fwd", SPEC, 7, CPU, fallback) is tuned
    assert calls == [("fwd", SPEC, 7, CPU)]


def test_the_installed_entry_point_names_the_tuner(monkeypatch):
    monkeypatch.setattr(record, "_miss_tuner", None)
    monkeypatch.setattr(record, "_no_miss_tuner", False)
    from mhfgen.tuning import on_miss

    assert record.miss_tuner() is on_miss.tune_missing


def test_a_served_call_with_the_switch_on_loads_the_tuner_through_the_hook():
    """dispatch and record import no tuner module: with MHFGEN_TUNE_ON_MISS off a miss
    leaves the tuner unloaded; with it on, the entry point loads mhfgen.tuning.on_miss."""
    code = """
import os, sys, torch, mhfgen
from mhfgen import dispatch
from mhfgen.spec import KernelSpec
spec = KernelSpec(2, 2, 16, 2, 16, "bfloat16", "interpreter")
dispatch.explain_choice("fwd", spec, 7, torch.device("cpu"))
print(sorted(m for m in sys.modules if m.startswith("mhfgen.tuning.")
             and m not in ("mhfgen.tuning.lookup", "mhfgen.tuning.db", "mhfgen.tuning.buckets")))
"""
    env = {"MHFGEN_NO_TUNED": "1", "MHFGEN_TUNE_ON_MISS": "0", "PATH": "/usr/bin:/bin"}
    off = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert off.stdout.strip() == "[]"
    # bfloat16 on the interpreter: the tuner is loaded, and declines without searching
    on = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "MHFGEN_TUNE_ON_MISS": "1"},
        check=True,
    )
    assert "mhfgen.tuning.on_miss" in on.stdout
    assert "bfloat16 does not run in Triton's interpreter" in on.stderr


def test_no_import_circle_in_mhfgen():
    """Every import counts, those inside functions too (grimp reads them all): a module
    never reaches itself again through the modules it imports."""
    import grimp

    graph = grimp.build_graph("mhfgen", cache_dir=None)
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                circles.append(" -> ".join((module, *back)))
    assert circles == []


def test_no_variant_module_imports_another():
    """Each module of mhfgen.variants registers its variant when imported, and the first
    registry lookup imports them all: one importing another would start that discovery
    halfway through its own import. What variants share lives in the modules whose names
    start with '_' (and in mhfgen.kernels), which import no variant module either. Every
    import counts, those inside functions too (grimp), and a new variant is covered by
    this test without naming it."""
    import pkgutil

    import grimp

    from mhfgen import variants

    stems = {
        f"mhfgen.variants.{m.name}"
        for m in pkgutil.iter_modules(variants.__path__)
        if not m.name.startswith("_")
    }
    assert len(stems) >= 9
    graph = grimp.build_graph("mhfgen", cache_dir=None)
    shared = {
        f"mhfgen.variants.{m.name}"
        for m in pkgutil.iter_modules(variants.__path__)
        if m.name.startswith("_")
    } | {m for m in graph.modules if m.startswith("mhfgen.kernels")}
    offenders = sorted(
        f"{importer} -> {imported}"
        for importer in stems | shared
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported in stems and imported != importer
    )
    assert offenders == []
