"""Shared fixtures: isolate mhfgen's caches and databases from the user's home."""
import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_mhfgen_dirs(tmp_path_factory, monkeypatch):
    # Generated kernels are shared across the session (content-hash names make that safe);
    # databases are per test.
    cache = os.environ.get("MHFGEN_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("MHFGEN_CACHE_DIR", cache)
    monkeypatch.setenv("MHFGEN_DB", str(tmp_path_factory.mktemp("db") / "tuning.sqlite"))


@pytest.fixture
def fresh_dispatch():
    """The dispatcher's caches (its choices, the databases it read, the launchers' plans)
    emptied before and after the test."""
    from mhfgen import dispatch  # here, not at the top: mhfgen must be imported by a test first

    dispatch.clear_cache()
    yield
    dispatch.clear_cache()
