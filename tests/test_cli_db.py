"""`mhfgen list`, `show`, `export`, `import` on databases filled through the API."""

import json
import os

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import triton
from cases import TINY_FLAGS
from tuning_helpers import run_sql

from mhfgen import registry
from mhfgen.cli import main
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

H200 = ("NVIDIA H200", "9.0")
SPEC = KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90")
TINY = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")


def winner(
    kernel="flash_mhf_fwd", tokens=16384, ms=1.0, gpu=H200, spec=SPEC, template=None, config=None
):
    config = config or registry.get(kernel).Config(
        block_m=128, block_n=64, num_warps=8, num_stages=3
    )
    key = TuningKey.of(
        kernel,
        template or template_hash(kernel),
        spec,
        shape_bucket(tokens),
        tokens,
        gpu[0],
        gpu[1],
        triton.__version__,
    )
    return WinnerRecord(
        key, config, ms, 400.0, 1.25 * ms, 1.25, "GPU test timer", 32, "0.1.0", "2.11.0", utc_now()
    )


def fill(path, *records):
    with TuningDB.open(path) as db:
        for rec in records:
            db.put_winner(rec)


def test_list_groups_per_gpu_and_flags_stale_templates(capsys):
    fill(
        os.environ["MHFGEN_DB"],
        winner(),
        winner(kernel="flash_mhf_bwd_dq", ms=2.0),
        winner(gpu=("NVIDIA A100-SXM4-80GB", "8.0"), ms=3.0),
        winner(tokens=2048, template="0123456789abcdef"),
    )
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "user database" in out and "4 tuned config(s)" in out
    assert "NVIDIA H200 (compute capability 9.0)" in out
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in out
    assert out.count("stale: kernel code changed") == 1
    assert "BM128 BN64 w8 s3" in out and "1.25x" in out
    assert "shipped database" in out and "absent" in out
    assert main(["list", "--gpu", "NVIDIA A100-SXM4-80GB"]) == 0
    assert "1 tuned config(s)" in capsys.readouterr().out


def test_list_of_an_empty_setup_says_how_to_tune(capsys):
    assert main(["list"]) == 0
    assert "nothing tuned yet: run `mhfgen tune`" in capsys.readouterr().out


def test_show_explains_the_dispatch_choice(capsys):
    tuned = Fwd(block_m=16, block_n=16)
    fill(
        os.environ["MHFGEN_DB"],
        winner(spec=TINY, tokens=32, gpu=("interpreter", "none"), config=tuned),
    )
    args = ["show", *TINY_FLAGS]
    assert main([*args, "--tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "dispatch picks BM16 BN16 w4 s2 (exact, tuned at 32 tokens, user database)" in out
    assert "dispatch picks" in out and "(heuristic)" in out  # the untuned backward kernels
    assert main([*args, "--tokens", "1000"]) == 0
    assert "(nearest, tuned at 32 tokens" in capsys.readouterr().out


def test_export_carries_provenance_and_import_merges(tmp_path, capsys):
    source, target = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    fill(source, winner(ms=1.0), winner(tokens=4096, ms=0.3))
    fill(target, winner(ms=2.0, config=Fwd(block_m=64)), winner(tokens=4096, ms=0.1))
    out_file = tmp_path / "e.json"
    assert main(["export", "-o", str(out_file), "--db", str(source)]) == 0
    doc = json.loads(out_file.read_text())
    assert doc["format"] == "mhfgen-tuning-export" and len(doc["records"]) == 2
    rec = doc["records"][0]
    for field in (
        "gpu_name",
        "compute_capability",
        "triton_version",
        "torch_version",
        "mhfgen_version",
        "template_hash",
        "created",
        "ms",
        "default_ms",
        "speedup",
        "tflops",
        "timer",
        "config",
        "bucket",
        "tokens",
    ):
        assert rec[field] is not None, field
    capsys.readouterr()
    assert main(["import", str(out_file), "--db", str(target)]) == 0
    assert "0 added, 1 replaced (faster), 1 kept" in capsys.readouterr().out
    with TuningDB.open(target, readonly=True) as db:
        got = {w.key.tokens: (w.ms, w.config.block_m) for w in db.winners()}
    assert got == {16384: (1.0, 128), 4096: (0.1, 128)}


def test_import_refuses_records_of_another_template(tmp_path, capsys):
    source = tmp_path / "a.sqlite"
    fill(source, winner(), winner(kernel="flash_mhf_bwd_dkv", template="feedfacefeedface"))
    out_file = tmp_path / "e.json"
    assert main(["export", "-o", str(out_file), "--db", str(source)]) == 0
    capsys.readouterr()
    assert main(["import", str(out_file), "--db", str(tmp_path / "b.sqlite")]) == 1
    out, err = capsys.readouterr()
    assert "1 added" in out and "1 refused" in out
    assert "refused 1 record(s) of flash_mhf_bwd_dkv tuned for template feedfacefeedface" in err
    assert "re-tune" in err


def test_import_keeps_records_of_another_template_whose_code_is_unchanged(tmp_path, capsys):
    """A template edit that leaves a config's generated code alone (a new knob, say)
    does not cost its tuned records: the code hash stored with them still matches."""
    import dataclasses

    from mhfgen.codegen import code_hash

    old = winner(kernel="flash_mhf_bwd_dkv", template="feedfacefeedface")
    same = dataclasses.replace(old, code_hash=code_hash(old.key.kernel, SPEC, old.config))
    source = tmp_path / "a.sqlite"
    fill(source, same)
    out_file = tmp_path / "e.json"
    assert main(["export", "-o", str(out_file), "--db", str(source)]) == 0
    assert json.loads(out_file.read_text())["records"][0]["code_hash"] == same.code_hash
    capsys.readouterr()
    assert main(["import", str(out_file), "--db", str(tmp_path / "b.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "1 added" in out and "1 tuned for an older template whose code is unchanged" in out
    # stored under today's template hash: dispatch takes it without rendering its code
    from mhfgen.codegen import template_hash
    from mhfgen.tuning.db import TuningDB

    with TuningDB.open(tmp_path / "b.sqlite", readonly=True) as db:
        (stored,) = db.winners()
    assert stored.key.template_hash == template_hash("flash_mhf_bwd_dkv")
    assert (stored.code_hash, stored.config, stored.ms) == (same.code_hash, same.config, same.ms)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "Expecting property name"),
        ('{"format": "something"}', "not an mhfgen export"),
        ('{"format": "mhfgen-tuning-export", "schema_version": 99, "records": []}', "newer"),
        (
            '{"format": "mhfgen-tuning-export", "schema_version": 1, "records": [{"kernel": 1}]}',
            "record 0",
        ),
    ],
)
def test_import_of_a_bad_file_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    assert main(["import", str(path), "--db", str(tmp_path / "b.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "command", [["list"], ["export", "-o", "-"], ["show"], ["import", "IMPORT"]]
)
@pytest.mark.parametrize("damage", ["corrupt", "foreign", "newer"])
def test_broken_databases_are_one_line_errors(tmp_path, capsys, command, damage):
    path = tmp_path / "broken.sqlite"
    if damage == "corrupt":
        path.write_bytes(b"definitely not sqlite" * 64)
    else:
        fill(path, winner())
        run_sql(
            path,
            "DELETE FROM meta WHERE key = 'format'"
            if damage == "foreign"
            else "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
        )
    export = tmp_path / "e.json"
    export.write_text(
        json.dumps({"format": "mhfgen-tuning-export", "schema_version": 1, "records": []})
    )
    command = [str(export) if c == "IMPORT" else c for c in command]
    assert main([*command, "--db", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err
