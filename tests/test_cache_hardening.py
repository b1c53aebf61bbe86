"""What mhfgen writes under its cache folder, on a machine shared with other users:
generated modules run from verified source only (never a planted .pyc), the folders are
private, a folder another user owns or may write is refused, and the study lock never
follows a symbolic link and dies with its holder."""

import importlib.util
import logging
import multiprocessing
import os
import signal
import stat
import sys
from pathlib import Path

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from cases import TINY_FLAGS

from mhfgen import codegen
from mhfgen.cli import main
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

SPEC = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
TINY = [*TINY_FLAGS, "--tokens", "32"]

pytestmark = pytest.mark.usefixtures("fresh_dispatch")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder of this test, and codegen's in-process caches emptied."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")
    monkeypatch.setattr(codegen, "_fallback", None)
    codegen._clear_caches()
    codegen._modules.clear()
    yield cache
    codegen._clear_caches()
    codegen._modules.clear()


def _load():
    return codegen.load_kernel("flash_mhf_fwd", SPEC, Fwd(block_m=16, block_n=16))


def test_a_planted_pyc_beside_a_generated_module_never_runs(fresh_cache, tmp_path):
    fn = _load()
    path = Path(sys.modules[fn.fn.__module__].__file__)
    assert path.parent == fresh_cache / "kernels"
    marker = tmp_path / "pwned"
    evil = compile(f"open({str(marker)!r}, 'w').write('ran')\n", str(path), "exec")
    pyc = Path(importlib.util.cache_from_source(str(path)))
    pyc.parent.mkdir(exist_ok=True)
    info = path.stat()
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    pyc.write_bytes(bytes(_code_to_timestamp_pyc(evil, int(info.st_mtime), info.st_size)))
    codegen._clear_caches()
    codegen._modules.clear()
    del sys.modules[fn.fn.__module__]
    again = _load()
    assert not marker.exists(), "bytecode from the cache folder was executed"
    assert again is not fn and again.fn.__name__ == fn.fn.__name__
    # Triton reads the kernel's source through inspect: the verified lines
    import inspect

    assert "def flash_mhf_fwd_kernel" in inspect.getsource(again.fn)


def test_a_generated_module_changed_on_disk_is_not_executed(fresh_cache, monkeypatch):
    """The file is checked against the source rendered in memory just before it runs."""
    real = codegen._written

    def written_then_swapped(name, source):
        path = real(name, source)
        path.write_text(source + "\nraise SystemExit('tampered')\n")
        return path

    monkeypatch.setattr(codegen, "_written", written_then_swapped)
    with pytest.raises(RuntimeError, match="changed on disk while it was loaded"):
        _load()


def test_cache_folders_are_created_private(fresh_cache):
    _load()
    from mhfgen.tuning.problem import DeviceFacts, TuningProblem
    from mhfgen.tuning.search import study_storage_url

    study_storage_url(TuningProblem(SPEC, 32), DeviceFacts("interpreter", "interpreter", "none", 1))
    for folder in (fresh_cache, fresh_cache / "kernels", fresh_cache / "studies"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def _unsafe(folder: Path, how: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if how == "writable by others":
        os.chmod(folder, 0o777)
    else:
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another user")
        os.chown(folder, 54321, -1)


@pytest.mark.parametrize("how", ["writable by others", "owned by another user"])
@pytest.mark.parametrize("which", ["", "kernels"])
def test_an_unsafe_kernel_cache_is_refused(fresh_cache, caplog, how, which):
    _unsafe(fresh_cache / which, how)
    with caplog.at_level(logging.WARNING):
        fn = _load()
    path = Path(sys.modules[fn.fn.__module__].__file__)
    assert fresh_cache not in path.parents  # a private temporary folder instead
    assert not (fresh_cache / "kernels").exists() or not any((fresh_cache / "kernels").iterdir())
    message = (
        "may be written by other users" if how.startswith("writable") else "belongs to another user"
    )
    assert message in caplog.text and "MHFGEN_CACHE_DIR" in caplog.text


@pytest.mark.parametrize("how", ["writable by others", "owned by another user"])
def test_tune_refuses_an_unsafe_studies_folder(fresh_cache, capsys, how):
    _unsafe(fresh_cache / "studies", how)
    assert main(["tune", "--no-progress", "--kernels", "fwd", "--trials", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot create the study folder" in err, err


# -- the study lock ------------------------------------------------------------------------
def _study_file(cache: Path) -> Path:
    import torch

    from mhfgen.tuning.problem import DeviceFacts, TuningProblem
    from mhfgen.tuning.search import storage_path, study_storage_url

    url = study_storage_url(TuningProblem(SPEC, 32), DeviceFacts.of(torch.device("cpu")))
    return storage_path(url)


def test_a_symlinked_study_lock_is_never_followed(fresh_cache, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    study = _study_file(fresh_cache)
    Path(f"{study}.lock").symlink_to(victim)
    assert main(["tune", "--no-progress", "--kernels", "fwd", "--trials", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot lock the study" in err, err
    assert victim.read_text() == "precious\n"
    assert Path(f"{study}.lock").is_symlink()


def _hold(path: str, ready) -> None:
    from mhfgen.tuning.study import study_lock

    with study_lock(path):
        ready.set()
        signal.pause()


def test_the_study_lock_dies_with_a_sigkilled_holder(fresh_cache):
    from mhfgen.tuning.study import StudyBusyError, study_lock

    study = str(_study_file(fresh_cache))
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(study, ready))
    proc.start()
    assert ready.wait(60)
    with pytest.raises(StudyBusyError, match=f"pid {proc.pid}"):
        with study_lock(study):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    with study_lock(study):  # released by the kernel with its holder
        pass
