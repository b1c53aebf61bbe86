"""`mhfgen tune` takes problems this machine can tune and says so in one line otherwise
(absurd token counts, problems too big for the interpreter or for the device's memory);
on the CPU, --tokens alone tunes the small CPU problem, not another one; `codegen
--config` that is not JSON is one line naming the flag."""

import os

import pytest
from cases import TINY_FLAGS

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on
from mhfgen.cli import main
from mhfgen.cli import tune as tune_cli
from mhfgen.presets import PRESETS
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.db import TuningDB
from mhfgen.tuning.problem import TuningProblem

pytestmark = pytest.mark.usefixtures("fresh_dispatch")
TINY = TINY_FLAGS


@pytest.fixture(autouse=True)
def _no_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")


def one_line_error(capsys, *parts) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err
    return err


def nothing_stored():
    path = os.environ["MHFGEN_DB"]
    if os.path.exists(path):
        with TuningDB.open(path, readonly=True) as db:
            assert db.trials() == [] and db.winners() == []


@pytest.mark.parametrize("tokens", [str(2**40), str(2**24 + 1), str(10**30)])
def test_absurd_token_counts_are_one_line_errors(tokens, capsys):
    assert main(["tune", "--no-progress", *TINY, "--tokens", tokens]) == 2
    one_line_error(
        capsys,
        f"--tokens {tokens} is more than mhfgen tune takes",
        f"{tune_cli.MAX_TUNE_TOKENS} = 2**24",
    )
    nothing_stored()


def test_the_token_bound_is_the_documented_one():
    assert tune_cli.MAX_TUNE_TOKENS == 2**24
    # past it even the smallest preset's tuning holds more than 300 GiB
    small = min(PRESETS.values(), key=lambda p: p.heads * p.head_dim)
    spec = KernelSpec(
        small.heads,
        small.heads,
        small.head_dim,
        small.experts,
        small.expert_dim,
        "float16",
        "interpreter",
    )
    assert tune_cli.workload_bytes(TuningProblem(spec, 2**24)) > 300 * 2**30


@pytest.mark.parametrize(
    "flags, suggested",
    [
        (["--preset", "370M", "--dtype", "float32"], "--tokens 32 --dtype float32"),
        (
            ["--preset", "1.3B", "--dtype", "float16", "--tokens", "64"],
            "--tokens 64 --dtype float32",
        ),
        (
            [
                "--heads",
                "1000000",
                "--head-dim",
                "16",
                "--intermediate",
                "16",
                "--experts",
                "1",
                "--tokens",
                "1",
                "--dtype",
                "float32",
            ],
            "--tokens 1 --dtype float32",
        ),
        ([*TINY, "--tokens", "4096"], "--tokens 1024 --dtype float32"),
        (["--tokens", str(2**24)], "--tokens 1024"),
    ],
)
def test_problems_too_big_for_the_interpreter_are_refused_up_front(flags, suggested, capsys):
    assert main(["tune", "--no-progress", *flags]) == 2
    err = one_line_error(
        capsys,
        "too big for Triton's interpreter",
        "tune it on a GPU",
        "--heads 2 --kv-heads 1 --head-dim 32 --intermediate 64 --experts 2",
        suggested,
    )
    # the suggestion fits: tuning it is not refused
    suggestion = err.split("or try ")[1].split()
    problem = dict(zip(suggestion[::2], suggestion[1::2]))
    spec = KernelSpec(
        int(problem["--heads"]),
        int(problem["--kv-heads"]),
        int(problem["--head-dim"]),
        int(problem["--experts"]),
        int(problem["--intermediate"]) // int(problem["--experts"]),
        problem["--dtype"],
        "interpreter",
    )
    fits = TuningProblem(spec, int(problem["--tokens"]))
    assert fits.model_flops_fwd_bwd() <= tune_cli.CPU_MAX_TUNE_FLOPS
    nothing_stored()


def test_a_problem_larger_than_the_devices_memory_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(tune_cli, "_device_memory", lambda device: 2**20)  # 1 MiB
    assert main(["tune", "--no-progress", *TINY, "--tokens", "1024"]) == 2
    one_line_error(capsys, "does not fit", "more than this host's 0 GiB", "fewer --tokens")
    nothing_stored()


def test_tokens_alone_on_the_cpu_tune_the_small_problem_at_those_tokens(
    tmp_path, monkeypatch, capsys
):
    """Not the 8-head, D=128 problem of the flags' defaults, which the interpreter cannot
    tune: the small CPU problem, at the tokens asked for."""
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "cache"))  # a study of its own
    assert (
        main(["tune", "--no-progress", "--tokens", "16", "--kernels", "fwd", "--trials", "1"]) == 0
    )
    captured = capsys.readouterr()
    small = tune_cli.CPU_PROBLEM
    assert (
        f"H={small['heads']} Hkv={small['kv_heads']} D={small['head_dim']} "
        f"I={small['intermediate']} E={small['experts']}"
    ) in captured.err
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        [winner] = db.winners()
    k = winner.key
    assert (k.heads, k.kv_heads, k.head_dim, k.experts, k.tokens, k.dtype) == (
        small["heads"],
        small["kv_heads"],
        small["head_dim"],
        small["experts"],
        16,
        "float32",
    )


@pytest.mark.parametrize(
    "config, said",
    [
        ("notjson", "--config is not JSON (Expecting value at character 1)"),
        ('{"block_m": 64', "--config is not JSON"),
        ("[" * 100000, "--config is not a config: JSON nested too deeply"),
    ],
)
def test_codegen_config_that_is_not_json_is_one_line_naming_the_flag(config, said, capsys):
    assert main(["codegen", *TINY, "--config", config]) == 2
    err = one_line_error(capsys, said)
    assert "line 1 column" not in err  # not the raw decoder message
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", [["show"], ["codegen"]])
@pytest.mark.parametrize(
    "flags, said",
    [
        (["--tokens", str(10**30)], "--tokens must be at most 4611686018427387904 (2**62)"),
        (["--heads", str(10**23), "--kv-heads", "1"], "--heads must be at most"),
        (
            ["--experts", str(10**23), "--intermediate", str(10**23)],
            "--intermediate must be at most",
        ),
    ],
)
def test_sizes_past_what_the_database_stores_are_one_line_errors(command, flags, said, capsys):
    assert main([*command, *flags]) == 2
    one_line_error(capsys, said)
