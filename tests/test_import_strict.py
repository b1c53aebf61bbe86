"""`mhfgen import` and the database layer refuse values that mean something else, name the
record and the field in one line, and write all records or none."""

import copy
import json
import os

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import triton
from tuning_helpers import run_sql

from mhfgen import registry
from mhfgen.cli import main
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.tuning.exchange import ExchangeError, export_winners, parse_export
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

SPEC = KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")


def winner(tokens=16384, ms=1.0, kernel="flash_mhf_fwd"):
    key = TuningKey.of(
        kernel,
        template_hash(kernel),
        SPEC,
        shape_bucket(tokens),
        tokens,
        "NVIDIA H200",
        "9.0",
        triton.__version__,
    )
    config = registry.get(kernel).Config(block_m=128, block_n=64, num_warps=8, num_stages=3)
    return WinnerRecord(
        key, config, ms, 400.0, 1.25 * ms, 1.25, "GPU test timer", 32, "0.1.0", "2.11.0", utc_now()
    )


@pytest.fixture
def export_doc(tmp_path):
    """An export of three good records (tokens 1024, 4096, 16384)."""
    path = tmp_path / "source.sqlite"
    with TuningDB.open(path) as db:
        for tokens in (1024, 4096, 16384):
            db.put_winner(winner(tokens))
    with TuningDB.open(path, readonly=True) as db:
        return export_winners(db)


def _bad(doc, index, field, value):
    doc = copy.deepcopy(doc)
    rec = doc["records"][index]
    if field.startswith("config."):
        target, name = rec["config"], field.split(".", 1)[1]
    else:
        target, name = rec, field
    if value is KeyError:
        del target[name]
    else:
        target[name] = value
    return doc


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("config.block_m", 2**40, "block_m must be a power of two"),
        ("config.group_heads", 2.0, "group_heads must be an integer"),
        ("config.inter_splits", 1.5, "inter_splits must be an integer"),
        ("config.tma", "false", "tma must be true or false"),
        ("config.num_warps", True, "num_warps must be one of"),
        ("config.tma", KeyError, "missing fields ['tma']"),
        ("heads", 2.7, "heads must be an integer"),
        ("heads", True, "heads must be an integer"),
        ("tokens", 10**30, "tokens must be in 0.."),
        ("tokens", "16384", "tokens must be an integer"),
        ("bucket", 4096, "bucket 4096 is not the bucket of 16384 tokens"),
        ("head_dim", 8, "head_dim must be in 16..256"),
        ("dtype", "float64", "KernelSpec.dtype"),
        ("compute_capability", "1.2", "KernelSpec.target must be one of"),
        ("gpu_name", 7, "gpu_name must be a string"),
        ("tflops", "fast", "tflops must be a number"),
        ("trials", "many", "trials must be an integer"),
        ("default_ms", [1], "default_ms must be a number"),
        ("ms", -1.0, "ms must be positive"),
        ("ms", KeyError, "missing field ms"),
        ("variant", KeyError, "missing key field variant"),
        ("surprise", 1, "unknown fields surprise"),
    ],
)
def test_each_bad_value_is_one_line_naming_record_and_field(
    export_doc, tmp_path, capsys, field, value, message
):
    doc = _bad(export_doc, 2, field, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    target = tmp_path / "target.sqlite"
    assert main(["import", str(path), "--db", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "record 2: " in err and message in err, err
    with pytest.raises(ExchangeError, match="^record 2: "):
        parse_export(doc)


def test_a_bad_record_after_good_ones_writes_nothing(export_doc, tmp_path, capsys):
    target = tmp_path / "target.sqlite"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad(export_doc, 2, "tokens", 10**30)))
    assert main(["import", str(path), "--db", str(target)]) == 2
    with TuningDB.open(target, readonly=True) as db:
        assert db.winners() == []


def test_a_failure_while_writing_rolls_the_whole_import_back(export_doc, tmp_path, monkeypatch):
    """Records that pass every check but fail inside SQLite (here: a trigger that aborts
    the third insert) leave the database as it was: one transaction."""
    target = tmp_path / "target.sqlite"
    with TuningDB.open(target) as db:
        db.put_winner(winner(16384, ms=5.0))
    run_sql(
        target,
        "CREATE TRIGGER no_1024 BEFORE INSERT ON winners WHEN NEW.tokens = 1024 "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    records = parse_export(export_doc)
    from cases import KERNELS

    from mhfgen.tuning.exchange import import_winners

    hashes = {k: template_hash(k) for k in KERNELS}
    with TuningDB.open(target) as db:
        with pytest.raises(Exception, match="refused by the test"):
            import_winners(db, list(reversed(records)), hashes)  # 16384, 4096, then 1024
    with TuningDB.open(target, readonly=True) as db:
        assert [(w.key.tokens, w.ms) for w in db.winners()] == [(16384, 5.0)]


def test_good_imports_still_merge(export_doc, tmp_path, capsys):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(export_doc))
    assert main(["import", str(path), "--db", str(tmp_path / "t.sqlite")]) == 0
    assert "3 added" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make",
    [
        lambda: TuningKey(
            "fwd", "flash_mhf_fwd", "h", 2.7, 2, 128, 1, 64, "float32", 1, 1, "g", "c", "t"
        ),
        lambda: TuningKey(
            "fwd", "flash_mhf_fwd", "h", 2, 2, 128, 1, 64, "float32", 1, 10**30, "g", "c", "t"
        ),
        lambda: TuningKey(
            "fwd", "flash_mhf_fwd", "", 2, 2, 128, 1, 64, "float32", 1, 1, "g", "c", "t"
        ),
        lambda: WinnerRecord(winner().key, Fwd(), "fast", 1.0, None, None, "", 1, "", "", ""),
        lambda: WinnerRecord(winner().key, Fwd(), 1.0, 1.0, None, None, "", "many", "", "", ""),
        lambda: WinnerRecord(
            winner().key, {"block_m": 64}, 1.0, 1.0, None, None, "", 1, "", "", ""
        ),
    ],
)
def test_the_database_types_refuse_bad_values(make):
    with pytest.raises(ValueError):
        make()


def test_a_stored_row_with_a_float_size_is_skipped_not_truncated(tmp_path, caplog):
    path = tmp_path / "t.sqlite"
    with TuningDB.open(path) as db:
        db.put_winner(winner(16384))
        db.put_winner(winner(4096))
    run_sql(
        path,
        "UPDATE winners SET heads = 8.5 WHERE tokens = 4096",
        (
            "UPDATE winners SET config = ? WHERE tokens = 16384",
            [json.dumps({**Fwd().as_dict(), "tma": "false"})],
        ),
    )
    with TuningDB.open(path, readonly=True) as db:
        assert db.winners() == []
    assert caplog.text.count("skipping an unreadable winner") == 2
    assert "heads must be an integer" in caplog.text and "tma must be true or false" in caplog.text


def test_dispatch_ignores_the_bad_rows_of_a_database(tmp_path, monkeypatch, caplog):
    from mhfgen import dispatch

    path = tmp_path / "t.sqlite"
    tiny = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
    key = TuningKey.of(
        "flash_mhf_fwd",
        template_hash("flash_mhf_fwd"),
        tiny,
        32,
        32,
        "interpreter",
        "none",
        triton.__version__,
    )
    with TuningDB.open(path) as db:
        db.put_winner(
            WinnerRecord(key, Fwd(block_m=16, block_n=16), 1.0, 1.0, None, None, "", 1, "", "", "")
        )
    run_sql(
        path,
        (
            "UPDATE winners SET config = ?",
            [json.dumps({**Fwd(block_m=16, block_n=16).as_dict(), "group_heads": 1.0})],
        ),
    )
    monkeypatch.setenv("MHFGEN_DB", str(path))
    dispatch.clear_cache()
    import torch

    choice = dispatch.explain_choice("flash_mhf_fwd", tiny, 32, torch.device("cpu"))
    assert choice.source == "heuristic"
    assert "group_heads must be an integer" in caplog.text
    assert os.environ["MHFGEN_DB"] == str(path)


def test_a_write_failure_of_the_import_command_is_one_line(export_doc, tmp_path, capsys):
    target = tmp_path / "target.sqlite"
    TuningDB.open(target).close()
    run_sql(
        target,
        "CREATE TRIGGER no_1024 BEFORE INSERT ON winners WHEN NEW.tokens = 1024 "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    )
    path = tmp_path / "good.json"
    path.write_text(json.dumps(export_doc))
    assert main(["import", str(path), "--db", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wrote nothing" in err and "refused by the test" in err
    with TuningDB.open(target, readonly=True) as db:
        assert db.winners() == []


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe\x00 not utf-8", "can't decode byte"),
        (b"[" * 100000, "nested too deeply"),
        (
            b'{"format": "mhfgen-tuning-export", "schema_version": true, "records": []}',
            "'schema_version' must be an integer",
        ),
    ],
)
def test_unreadable_export_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    assert main(["import", str(path), "--db", str(tmp_path / "t.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
