"""Run-time recording (MHFGEN_RECORD), `mhfgen tune --from-record` and
MHFGEN_TUNE_ON_MISS: what dispatch serves without an exact key is recorded once per key per
process, safely from many processes, and tuned offline or on first sight."""

import json
import multiprocessing
import os

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch
import triton
from cases import KERNELS

from mhfgen import dispatch, record, registry
from mhfgen.cli import main
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning import on_miss
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

CPU = torch.device("cpu")
SPEC = KernelSpec(2, 2, 16, 2, 16, "float32", "interpreter")
FWD = "flash_mhf_fwd"


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")
    for name in ("MHFGEN_NO_TUNED", record.RECORD_ENV, record.TUNE_ON_MISS_ENV, on_miss.TRIALS_ENV):
        monkeypatch.delenv(name, raising=False)
    record.forget_seen()
    on_miss.forget_tried()
    yield
    record.forget_seen()
    on_miss.forget_tried()


def store(tokens, config, kernel=FWD):
    key = TuningKey.of(
        kernel,
        template_hash(kernel),
        SPEC,
        shape_bucket(tokens),
        tokens,
        "interpreter",
        "none",
        triton.__version__,
    )
    with TuningDB.open(dbmod.paths.user_db_path()) as db:
        db.put_winner(WinnerRecord(key, config, 1.0, 1.0, 2.0, 2.0, "test", 5, "0", "0", utc_now()))


def lines(path):
    return [json.loads(t) for t in path.read_text().splitlines()]


def test_misses_are_recorded_once_per_key_and_exact_keys_never(tmp_path, monkeypatch):
    path = tmp_path / "rec.jsonl"
    monkeypatch.setenv(record.RECORD_ENV, str(path))
    store(100, Fwd(block_m=16, block_n=16))
    assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "exact"
    assert not path.exists()
    assert dispatch.explain_choice(FWD, SPEC, 90, CPU).source == "bucket"
    assert dispatch.explain_choice(FWD, SPEC, 5000, CPU).source == "nearest"
    assert dispatch.explain_choice("flash_mhf_bwd_dq", SPEC, 90, CPU).source == "heuristic"
    dispatch.clear_cache()  # decided again: still recorded only once per process
    dispatch.explain_choice(FWD, SPEC, 90, CPU)
    got = lines(path)
    assert [(r["kernel"], r["tokens"], r["source"]) for r in got] == [
        (FWD, 90, "bucket"),
        (FWD, 5000, "nearest"),
        ("flash_mhf_bwd_dq", 90, "heuristic"),
    ]
    first = got[0]
    assert {k: first[k] for k in record.SPEC_FIELDS} == SPEC.as_dict()
    assert (
        first["gpu_name"],
        first["compute_capability"],
        first["triton_version"],
        first["pid"],
    ) == ("interpreter", "none", triton.__version__, os.getpid())


def test_recording_is_off_without_the_variable(tmp_path):
    assert dispatch.explain_choice(FWD, SPEC, 90, CPU).source == "heuristic"
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_record_file_never_breaks_the_call(tmp_path, monkeypatch, caplog):
    (tmp_path / "dir").mkdir()
    monkeypatch.setenv(record.RECORD_ENV, str(tmp_path / "dir"))  # a folder, not a file
    assert dispatch.explain_choice(FWD, SPEC, 90, CPU).source == "heuristic"
    assert "cannot record a dispatch miss" in caplog.text


def _append_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        record.append_line(
            __import__("pathlib").Path(path),
            json.dumps({"writer": writer, "i": i, "pad": "x" * (500 + writer)}),
        )


def test_many_processes_append_whole_lines(tmp_path):
    path = tmp_path / "rec.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 200)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = lines(path)  # every line parses: none torn or interleaved
    assert sorted((r["writer"], r["i"]) for r in got) == [
        (w, i) for w in range(6) for i in range(200)
    ]


def test_reading_skips_a_torn_last_line_and_names_a_bad_one(tmp_path):
    good = json.dumps(
        dict(
            kernel=FWD,
            **SPEC.as_dict(),
            tokens=7,
            gpu_name="interpreter",
            compute_capability="none",
        )
    )
    path = tmp_path / "rec.jsonl"
    path.write_text(good + "\n" + good.replace("7", "9") + "\n" + good[:40])
    problems = record.read_problems(path)
    assert [(p.spec, p.tokens, p.kernels) for p in problems] == [
        (SPEC, 7, (FWD,)),
        (SPEC, 9, (FWD,)),
    ]
    path.write_text(good + '\n{"kernel": "nope"}\n' + good + "\n")
    with pytest.raises(record.RecordError, match="line 2: missing"):
        record.read_records(path)


def test_tune_from_record_tunes_what_a_run_recorded_and_resumes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "rec.jsonl"
    monkeypatch.setenv(record.RECORD_ENV, str(path))
    layer = mhfgen.FlashMHF(32, 2, 32, 2, backend="triton")
    x = torch.randn(1, 5, 32, requires_grad=True)
    layer(x).sum().backward()
    # the model's calls ask the dispatcher for ops (it picks the variant): the forward
    # and the split backward the calls ran (the one pass is not a miss: it is opt-in)
    assert {r["kernel"] for r in lines(path)} == set(registry.default_ops())
    monkeypatch.delenv(record.RECORD_ENV)

    args = ["tune", "--from-record", str(path), "--trials", "2", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 problem(s) on interpreter: 1 tuned now, 0 tuned before, 0 failed" in out
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        winners = db.winners()
        assert {(w.key.kernel, w.key.tokens) for w in winners} == {(k, 5) for k in KERNELS}
        assert len(db.trials(kernel=FWD)) == 2  # --trials applies
    dispatch.clear_cache()
    spec = KernelSpec(2, 2, 16, 2, 16, "float32", "interpreter")
    assert dispatch.explain_choice(FWD, spec, 5, CPU).source == "exact"

    assert main(args) == 0  # resumes: nothing left to tune
    captured = capsys.readouterr()
    assert "already tuned" in captured.err and "0 tuned now, 1 tuned before" in captured.out


def test_tune_from_record_errors(tmp_path, capsys):
    assert main(["tune", "--from-record", str(tmp_path / "absent.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    path = tmp_path / "rec.jsonl"
    path.write_text(
        json.dumps(
            dict(
                kernel=FWD,
                **SPEC.as_dict(),
                tokens=7,
                gpu_name="NVIDIA X",
                compute_capability="9.0",
            )
        )
        + "\n"
    )
    assert main(["tune", "--from-record", str(path), "--heads", "4"]) == 2
    assert "drop --heads" in capsys.readouterr().err
    assert main(["tune", "--from-record", str(path)]) == 0
    captured = capsys.readouterr()
    assert "recorded on NVIDIA X, not this device" in captured.err
    assert "nothing recorded on interpreter" in captured.out


def test_tune_on_miss_is_off_by_default():
    assert not record.tune_on_miss_enabled()
    assert dispatch.explain_choice(FWD, SPEC, 6, CPU).source == "heuristic"


def test_tune_on_miss_tunes_once_with_a_small_budget_and_stores(monkeypatch, caplog):
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "1")
    monkeypatch.setenv(on_miss.TRIALS_ENV, "2")
    caplog.set_level("WARNING")
    choice = dispatch.explain_choice(FWD, SPEC, 6, CPU)
    assert (choice.source, choice.layer, choice.tuned_tokens) == ("exact", "user", 6)
    assert "tuning flash_mhf_fwd" in caplog.text and "tuned flash_mhf_fwd in" in caplog.text
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        assert [(w.key.kernel, w.key.tokens, w.config) for w in db.winners()] == [
            (FWD, 6, choice.config)
        ]
        assert len(db.trials()) == 2
    dispatch.clear_cache()  # the next process (or a cleared cache) finds it stored
    monkeypatch.delenv(record.TUNE_ON_MISS_ENV)
    assert dispatch.explain_choice(FWD, SPEC, 6, CPU).source == "exact"


def test_tune_on_miss_skips_what_the_interpreter_cannot_run(monkeypatch, caplog):
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "1")
    spec = KernelSpec(2, 2, 16, 2, 16, "bfloat16", "interpreter")
    assert dispatch.explain_choice(FWD, spec, 6, CPU).source == "heuristic"
    assert "bfloat16 does not run" in caplog.text


def _training_inputs(tokens=5, grad=True):
    """q, k, u, v, r of SPEC at `tokens` tokens (float32), requiring grad when `grad`."""
    g = torch.Generator().manual_seed(0)
    s = SPEC
    q = torch.randn(1, tokens, s.heads, s.head_dim, generator=g)
    k, u, v = (
        torch.randn(s.kv_heads, s.experts, s.expert_dim, s.head_dim, generator=g) / 4
        for _ in range(3)
    )
    r = torch.rand(1, tokens, s.heads, s.experts, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, u, v, r)]


def test_tune_on_miss_of_a_training_call_tunes_forward_and_backward(monkeypatch, caplog):
    """A miss met inside a training call (q.requires_grad: the forward of an autograd
    Function and its backward, both with grad off) is tuned on the search's own detached
    inputs: a winner of each kernel is stored, and the caller's gradients are right."""
    from mhfgen import reference
    from mhfgen.ops import flash_mhf

    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "1")
    monkeypatch.setenv(on_miss.TRIALS_ENV, "2")
    caplog.set_level("WARNING")
    inputs = _training_inputs()
    out = flash_mhf(*inputs)
    do = torch.randn_like(out)
    out.backward(do)
    assert "does not require grad" not in caplog.text and "no config" not in caplog.text
    assert "failed" not in caplog.text, caplog.text
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        stored = {(w.key.op, w.key.tokens) for w in db.winners()}
    assert stored == {(op, 5) for op in registry.default_ops()}
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference.flash_mhf(*ref_inputs)
    ref.backward(do.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    for mine, theirs in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4)
    dispatch.clear_cache()  # stored: the next process finds every kernel exact
    monkeypatch.delenv(record.TUNE_ON_MISS_ENV)
    for op in registry.default_ops():
        assert dispatch.explain_choice(op, SPEC, 5, CPU).source == "exact"


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_tune_on_miss_under_no_grad_or_inference_mode_stores_a_winner(mode, monkeypatch):
    from mhfgen.ops import flash_mhf

    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "1")
    monkeypatch.setenv(on_miss.TRIALS_ENV, "1")
    with getattr(torch, mode)():
        flash_mhf(*_training_inputs(tokens=4, grad=False))
    with TuningDB.open(os.environ["MHFGEN_DB"], readonly=True) as db:
        assert [(w.key.op, w.key.tokens) for w in db.winners()] == [("fwd", 4)]
