"""mhfgen's on/off environment variables are read by one parser (mhfgen.env.flag):
1/true/yes/on and 0/false/no/off, any case, spaces around; anything else is one warning
and the default. "Off" words never switch a feature on."""

import json
import logging
import os
import subprocess
import sys

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch
import triton

from mhfgen import dispatch, env, record
from mhfgen.cli import main
from mhfgen.codegen import template_hash
from mhfgen.kernels.dispatched import two_streams
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning import on_miss
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

CPU = torch.device("cpu")
SPEC = KernelSpec(2, 2, 16, 2, 16, "float32", "interpreter")
FWD = "flash_mhf_fwd"
SWITCHES = (
    "MHFGEN_TUNE_ON_MISS",
    "MHFGEN_NO_TUNED",
    "MHFGEN_DETERMINISTIC",
    "MHFGEN_BACKWARD_STREAMS",
    "MHFGEN_JIT_LAUNCH",
    "MHFGEN_RECORD",
)
ON = ["1", "true", "yes", "on", "TRUE", " Yes ", "On\n"]
OFF = ["0", "false", "no", "off", "FALSE", " No ", "OFF\t"]


@pytest.fixture(autouse=True)
def clean(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    env.forget_warnings()
    on_miss.forget_tried()
    yield
    env.forget_warnings()
    on_miss.forget_tried()


def store(tokens, config):
    key = TuningKey.of(
        FWD,
        template_hash(FWD),
        SPEC,
        shape_bucket(tokens),
        tokens,
        "interpreter",
        "none",
        triton.__version__,
    )
    with TuningDB.open(dbmod.paths.user_db_path()) as db:
        db.put_winner(WinnerRecord(key, config, 1.0, 1.0, 2.0, 2.0, "test", 5, "0", "0", utc_now()))


@pytest.mark.parametrize("text", ON)
def test_on_words(text, monkeypatch):
    assert env.parse_flag(text) is True
    monkeypatch.setenv("MHFGEN_X", text)
    assert env.flag("MHFGEN_X") is True and env.flag("MHFGEN_X", default=True) is True


@pytest.mark.parametrize("text", OFF)
def test_off_words(text, monkeypatch):
    assert env.parse_flag(text) is False
    monkeypatch.setenv("MHFGEN_X", text)
    assert env.flag("MHFGEN_X") is False and env.flag("MHFGEN_X", default=True) is False


@pytest.mark.parametrize("text", [None, "", "  "])
def test_unset_or_empty_is_the_default_without_a_warning(text, monkeypatch, caplog):
    if text is not None:
        monkeypatch.setenv("MHFGEN_X", text)
    assert env.flag("MHFGEN_X") is False and env.flag("MHFGEN_X", default=True) is True
    assert not caplog.records


@pytest.mark.parametrize("value", ["no", "false", "off", "0", " OFF "])
def test_tune_on_miss_off_words_do_not_tune(value, monkeypatch):
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, value)
    monkeypatch.setenv(on_miss.TRIALS_ENV, "1")
    assert not record.tune_on_miss_enabled()
    assert dispatch.explain_choice(FWD, SPEC, 6, CPU).source == "heuristic"
    assert not dbmod.paths.user_db_path().exists()  # nothing tuned, nothing stored


@pytest.mark.parametrize("value", ["1", "yes", "on", "TRUE"])
def test_tune_on_miss_on_words_switch_it_on(value, monkeypatch):
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, value)
    assert record.tune_on_miss_enabled()


@pytest.mark.parametrize(
    "value, tuned",
    [
        ("false", True),
        ("no", True),
        ("off", True),
        ("0", True),
        ("true", False),
        ("yes", False),
        ("1", False),
    ],
)
def test_no_tuned_false_keeps_tuned_winners(value, tuned, monkeypatch):
    store(100, Fwd(block_m=16, block_n=16))
    monkeypatch.setenv("MHFGEN_NO_TUNED", value)
    assert dispatch.tuned_configs_enabled() is tuned
    source = dispatch.explain_choice(FWD, SPEC, 100, CPU).source
    assert source == ("exact" if tuned else "heuristic")


def test_deterministic_and_backward_streams_read_the_same_words(monkeypatch):
    gpu = torch.device("cuda", 0)
    for value, on in [
        ("off", False),
        ("no", False),
        ("false", False),
        ("yes", True),
        ("on", True),
        ("1", True),
    ]:
        monkeypatch.setenv("MHFGEN_DETERMINISTIC", value)
        assert dispatch.deterministic_requested() is on, value
        monkeypatch.setenv("MHFGEN_BACKWARD_STREAMS", value)
        assert two_streams(gpu) is (not on), value  # on: one stream
    assert not two_streams(CPU)


def test_junk_gives_one_warning_and_the_default(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    store(100, Fwd(block_m=16, block_n=16))
    monkeypatch.setenv("MHFGEN_NO_TUNED", "maybe")
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "2")
    for _ in range(3):
        assert dispatch.tuned_configs_enabled()  # the default: tuned configs used
        assert not record.tune_on_miss_enabled()  # the default: off
        dispatch.clear_cache()
        assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "exact"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "MHFGEN_NO_TUNED='maybe'" in w]) == 1, warnings
    assert len([w for w in warnings if "MHFGEN_TUNE_ON_MISS='2'" in w]) == 1, warnings
    assert all("\n" not in w for w in warnings)
    assert "1/true/yes/on or 0/false/no/off" in warnings[0]


def test_doctor_reports_tune_on_miss_as_parsed(monkeypatch, capsys):
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "off")
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tune_on_miss"] is False
    monkeypatch.setenv(record.TUNE_ON_MISS_ENV, "Yes")
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tune_on_miss"] is True


@pytest.mark.parametrize(
    "value, requested, warned",
    [("off", False, False), ("yes", True, False), ("sometimes", False, True)],
)
def test_jit_launch_reads_the_same_words(value, requested, warned):
    code = "import mhfgen.kernels.launch as c; print(c.JIT_LAUNCH_REQUESTED)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, MHFGEN_JIT_LAUNCH=value),
        check=True,
        timeout=120,
    )
    assert proc.stdout.strip() == str(requested)
    assert ("MHFGEN_JIT_LAUNCH='sometimes'" in proc.stderr) is warned
