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


#: the modules of `make test-fast` (marker `fast`): pure-Python checks of the spec, the
#: registry, the tuning database, dispatch and the command line, well under a minute on two
#: cores; everything that compiles or tunes through the interpreter, builds a wheel or
#: starts processes stays in `make test`. A test elsewhere can opt in with
#: @pytest.mark.fast.
FAST_MODULES = frozenset(
    {
        "test_buckets",
        "test_cli_db",
        "test_cli_json",
        "test_codegen",
        "test_config_fields",
        "test_dispatch",
        "test_heuristics",
        "test_import_property",
        "test_import_strict",
        "test_launch_plans",
        "test_no_outside_citations",
        "test_performance_doc",
        "test_record_paths",
        "test_reference",
        "test_registry",
        "test_tuning_db",
        "test_tuning_space",
        "test_validation",
    }
)
#: modules whose tests share something beyond their own tmp_path (processes that take every
#: core, GPUs, the checkout's build folders): `--dist loadgroup` runs each group's tests one after another on one worker
XDIST_GROUPS = {
    "test_distributed_benchmark": "distributed",
    "test_distributed_training": "distributed",
    "test_distributed_tp": "distributed",
    "test_multi_gpu": "gpus",
    # its tests share one wheel built from the checkout (setuptools writes build/ and the
    # egg-info there): two workers building at once collide
    "test_packaging": "packaging",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in FAST_MODULES and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.fast)
        if module in XDIST_GROUPS:
            item.add_marker(pytest.mark.xdist_group(XDIST_GROUPS[module]))
