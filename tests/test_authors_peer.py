"""The paper authors' kernel as a peer of `mhfgen bench` (mhfgen.peers.authors).

The authors' file is not in the repository (their repository carries no licence) and CI
has no GPU, so:
- the paths without a file, with a missing file, with a file that does not import or
  defines no FlashMLPFunction, and without a GPU are tested as a user meets them: the
  method is registered but not run by default, and asking for it is a one-line error;
- the layout plumbing (q and r handed over as contiguous (B, H, L, *) copies, the
  gradients flowing back to them) is tested with a stand-in file whose FlashMLPFunction
  computes the op in PyTorch in the authors' layout, against mhfgen's reference. That
  checks what mhfgen hands the kernel; the kernel's own speed and accuracy are measured
  only by a GPU run of `mhfgen bench --authors-kernel PATH`.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from cases import TINY_FLAGS

from mhfgen import bench, reference
from mhfgen.cli import main
from mhfgen.peers import authors

#: a FlashMLPFunction in the authors' layout: Q, O (B, H, L, D), K/U/V (Hkv, E, De, D),
#: R (B, H, L, E); differentiable through PyTorch
STAND_IN = textwrap.dedent(
    """
    import torch

    CALLS = []


    class FlashMLPFunction:
        @staticmethod
        def apply(Q, K, U, V, R):
            CALLS.append((tuple(Q.shape), Q.is_contiguous(), R.is_contiguous()))
            group = Q.shape[1] // K.shape[0]
            k, u, v = (w.repeat_interleave(group, 0).float() for w in (K, U, V))
            s = torch.einsum("bhld,hecd->bhlec", Q.float(), k)
            g = torch.einsum("bhld,hecd->bhlec", Q.float(), u)
            p = torch.nn.functional.silu(s) * g * R.float()[..., None]
            return torch.einsum("bhlec,hecd->bhld", p, v).to(Q.dtype)
    """
)


@pytest.fixture(autouse=True)
def _no_configured_file(monkeypatch):
    """Each test starts with no kernel file named, as a fresh process does."""
    monkeypatch.delenv(authors.ENV_VAR, raising=False)
    authors.configure(None)
    yield
    authors.configure(None)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    path = tmp_path / "flash_mlp_moe.py"
    path.write_text(STAND_IN)
    monkeypatch.setattr(authors, "_has_cuda", lambda: True)
    authors.configure(path)
    return path


def _problem(**kw):
    sizes = dict(heads=4, kv_heads=2, head_dim=16, intermediate=128, experts=2)
    sizes.update(kw)
    return bench.BenchProblem(**sizes, dtype=kw.pop("dtype", "bfloat16"), tokens=24)


def test_without_a_file_the_method_is_listed_but_not_run():
    assert "no kernel file" in authors.available()
    assert "authors" in bench.METHODS and "authors" in bench.methods_of("core")
    assert "authors" not in bench.methods_of("core", available_only=True)
    with pytest.raises(ValueError, match="'authors' cannot run here: no kernel file: fetch"):
        bench.run_benchmarks([_problem()], ["authors"], ["fwd"])


def test_the_environment_variable_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(authors.ENV_VAR, str(tmp_path / "nowhere.py"))
    assert authors.kernel_path() == (tmp_path / "nowhere.py").resolve()
    assert "does not exist" in authors.available()


def test_files_that_cannot_serve(tmp_path, monkeypatch):
    monkeypatch.setattr(authors, "_has_cuda", lambda: True)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('needs a GPU build')\n")
    authors.configure(broken)
    reason = authors.available()
    assert "does not import: RuntimeError: needs a GPU build" in reason
    assert len(reason.splitlines()) == 1
    other = tmp_path / "other.py"
    other.write_text("X = 1\n")
    authors.configure(other)
    assert "defines no FlashMLPFunction" in authors.available()


def test_without_a_gpu_the_method_is_left_out(stand_in, monkeypatch):
    monkeypatch.setattr(authors, "_has_cuda", lambda: False)
    assert "needs a CUDA GPU" in authors.available()
    assert "authors" not in bench.methods_of("core", available_only=True)


@pytest.mark.parametrize(
    "dtype,head_dim,expert_dim,words",
    [
        ("float16", 128, 256, "bfloat16 only, not float16"),
        ("bfloat16", 96, 256, "power-of-two head dims, not 96"),
        ("bfloat16", 128, 80, "multiples of 64, not 80"),
    ],
)
def test_problems_the_kernel_cannot_run(dtype, head_dim, expert_dim, words):
    assert words in authors.unsupported(dtype, head_dim, expert_dim)
    assert authors.unsupported("bfloat16", 64, 128) is None


def test_an_unsupported_problem_is_an_unsupported_row_with_its_reason(stand_in):
    (row,) = bench.run_benchmarks([_problem(head_dim=24)], ["authors"], ["fwd"], repeat=1)
    assert row.status == "unsupported"
    assert row.error == "the authors' kernel takes power-of-two head dims, not 24"


def test_the_kernel_gets_its_own_layout_and_computes_the_op(stand_in):
    p = _problem()
    proj, k, u, v, r = bench.core_inputs(p, "cpu", grad=True)
    q = proj.view(p.batch, p.seqlen, p.heads, p.head_dim)
    q_t, r_t = authors.to_authors_layout(q, r)
    assert q_t.is_contiguous() and q_t.shape == (p.batch, p.heads, p.seqlen, p.head_dim)
    assert r_t.is_leaf and r_t.requires_grad and r_t.shape == (p.batch, p.heads, p.seqlen, 2)
    out = authors.flash_mhf(q_t, k, u, v, r_t).transpose(1, 2)
    expected = reference.flash_mhf(q.double(), k.double(), u.double(), v.double(), r.double())
    err = (out.double() - expected).norm() / expected.norm()
    assert err < 1e-2
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q_t, k, u, v, r_t))


def test_bench_rows_of_both_passes(stand_in):
    rows = bench.run_benchmarks([_problem()], ["authors"], bench.PASSES, repeat=1)
    assert [(r.method, r.pass_, r.status) for r in rows] == [
        ("authors", "fwd", "ok"),
        ("authors", "fwdbwd", "ok"),
    ]
    module = authors._modules[stand_in.resolve()]
    assert module.CALLS and all(contiguous for _, contiguous, _ in module.CALLS)


def test_cli_names_the_file(stand_in, tmp_path, capsys):
    """--authors-kernel reaches the method: on the CPU's float32 problem its row fails
    with the kernel's own limit, the run goes on and the JSON keeps the reason."""
    authors.configure(None)
    out = tmp_path / "rows.json"
    argv = ["bench", *TINY_FLAGS, "--tokens", "16", "--methods", "mhfgen,authors"]
    argv += ["--passes", "fwd", "--repeat", "1", "--authors-kernel", str(stand_in)]
    assert main([*argv, "--json", str(out)]) == 0
    assert authors.kernel_path() == stand_in.resolve()
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["mhfgen"]["status"] == "ok"
    assert rows["authors"]["status"] == "unsupported"
    assert "takes bfloat16 only" in rows["authors"]["error"]
    assert "1 of 2 rows did not run" in capsys.readouterr().err


def test_cli_refuses_a_missing_file(tmp_path, capsys):
    missing = tmp_path / "missing.py"
    code = main(["bench", *TINY_FLAGS, "--tokens", "16", "--authors-kernel", str(missing)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"mhfgen bench: error: --authors-kernel: no file {str(missing)!r}"


def test_bench_h200_summary_has_an_authors_column(stand_in, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_h200.py"
    module_spec = importlib.util.spec_from_file_location("bench_h200_authors_test", path)
    bench_h200 = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(bench_h200)
    problem = _problem()
    monkeypatch.setattr(bench_h200, "TOKENS", problem.tokens)
    rows = bench.run_benchmarks([problem], ["authors", "torch"], bench.PASSES, repeat=1)
    summary = bench_h200.summary_markdown(rows, {"tiny": problem.shape})
    assert "| mhfgen | authors' kernel | PyTorch naive |" in summary
    assert "vs the authors' kernel" in summary
    json.dumps([r.as_dict() for r in rows])  # rows stay serialisable
