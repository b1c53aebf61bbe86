"""Scripting: `--json` of list, show, doctor and verify (documented keys), `python -m
mhfgen`, tables through tabulate, the legend of config codes, and where files live."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import triton
from cases import SMALL_FLAGS

from mhfgen import paths
from mhfgen.cli import main
from mhfgen.codegen import template_hash
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.tuning.search import CONFIG_LEGEND, describe_config
from mhfgen.variants.flash_mhf_bwd_dkv import Config as Dkv
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

ROOT = Path(__file__).resolve().parents[1]
SPEC = KernelSpec(2, 2, 32, 2, 32, "float32", "interpreter")
FWD = "flash_mhf_fwd"
PROBLEM = [*SMALL_FLAGS, "--tokens", "100"]


@pytest.fixture(autouse=True)
def no_shipped(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")


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
    with TuningDB.open(paths.user_db_path()) as db:
        db.put_winner(WinnerRecord(key, config, 1.5, 2.0, 3.0, 2.0, "test", 5, "0", "0", utc_now()))


def test_list_json(capsys):
    store(100, Fwd(block_m=32, block_n=16, group_heads=2))
    assert main(["list", "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # nothing but the document on stdout
    assert doc["format"] == "mhfgen-list/1"
    user, shipped = doc["databases"]
    assert (user["layer"], user["exists"], shipped["layer"], shipped["exists"]) == (
        "user",
        True,
        "shipped",
        False,
    )
    (w,) = user["winners"]
    assert (w["kernel"], w["tokens"], w["bucket"], w["ms"], w["speedup"], w["current"]) == (
        FWD,
        100,
        shape_bucket(100),
        1.5,
        2.0,
        True,
    )
    assert w["config"]["block_m"] == 32 and w["config_text"] == "BM32 BN16 w4 s2 gh2"
    assert {
        "heads",
        "kv_heads",
        "head_dim",
        "experts",
        "expert_dim",
        "dtype",
        "gpu_name",
        "compute_capability",
        "triton_version",
        "template_hash",
    } <= set(w)


def test_list_text_is_a_table_with_the_legend(capsys):
    store(100, Fwd(block_m=32, block_n=16))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("kernel"))
    assert set(lines[header + 1].strip()) == {"-", " "}  # tabulate's rule under the header
    assert lines[header + 2].split()[:1] == [FWD]
    assert "config codes:" in out and "gh  " in out and "block_m" in out


def test_show_json(capsys):
    store(100, Fwd(block_m=32, block_n=16))
    assert main(["show", *PROBLEM, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "mhfgen-show/1"
    assert doc["spec"] == SPEC.as_dict() and doc["tokens"] == 100
    fwd = doc["kernels"][FWD]
    assert fwd["dispatch"]["source"] == "exact" and fwd["dispatch"]["layer"] == "user"
    assert fwd["dispatch"]["config_text"] == "BM32 BN16 w4 s2"
    (db,) = fwd["databases"]
    assert db["layer"] == "user" and db["winners"][0]["tokens"] == 100
    assert doc["kernels"]["flash_mhf_bwd_dq"]["dispatch"]["source"] == "heuristic"


def test_doctor_json_names_the_paths(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("MHFGEN_DB")
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "mhfgen-doctor/1" and doc["triton"] == triton.__version__
    assert doc["cache_dir"] == str(tmp_path / "c")
    assert doc["user_db"] == str(tmp_path / "c" / "tuning.sqlite")
    assert doc["gpu"] is None and doc["record"] is None and doc["tune_on_miss"] is False


def test_verify_json_to_stdout(capsys):
    assert main(["verify", "--dtypes", "float32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "mhfgen-verify/1" and doc["failed"] == 0
    assert doc["passed"] == len(doc["results"]) > 0
    assert all(set(r["errors"]) == {"o", "dq", "dk", "du", "dv", "dr"} for r in doc["results"])


def test_json_file_and_bad_file(tmp_path, capsys):
    target = tmp_path / "list.json"
    assert main(["list", "--json", str(target)]) == 0
    assert "nothing tuned yet" in capsys.readouterr().out
    assert json.loads(target.read_text())["format"] == "mhfgen-list/1"
    assert main(["list", "--json", str(tmp_path / "no" / "dir.json")]) == 2
    assert "--json" in capsys.readouterr().err


def test_python_dash_m_mhfgen():
    done = subprocess.run(
        [sys.executable, "-m", "mhfgen", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0 and done.stdout.strip() == f"mhfgen {mhfgen.__version__}"


def test_cache_dir_and_user_db_follow_xdg_and_the_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("MHFGEN_CACHE_DIR")
    monkeypatch.delenv("MHFGEN_DB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert paths.cache_dir() == tmp_path / "xdg" / "mhfgen"
    assert paths.user_db_path() == paths.cache_dir() / "tuning.sqlite"
    monkeypatch.setenv("MHFGEN_CACHE_DIR", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"
    assert paths.user_db_path() == tmp_path / "mine" / "tuning.sqlite"  # the DB moves too
    monkeypatch.setenv("MHFGEN_DB", str(tmp_path / "other.sqlite"))
    assert paths.user_db_path() == tmp_path / "other.sqlite"  # MHFGEN_DB still wins
    assert paths.cache_dir() == tmp_path / "mine"


def test_the_legend_explains_every_code():
    every = (
        Fwd(
            block_m=64,
            block_n=64,
            group_heads=2,
            head_dim_split="pad",
            inter_splits=2,
            store_reset=False,
            tma=True,
            prefetch_scores=True,
            warp_specialize=True,
        ),
        Dkv(
            block_m=64,
            block_n=64,
            head_dim_split="pad",
            token_splits=2,
            transpose_acc=True,
            split_grads=True,
        ),
    )
    codes = {code for code, _ in CONFIG_LEGEND}
    for part in " ".join(describe_config(c) for c in every).split():
        stem = part.rstrip("0123456789")
        assert stem in codes, part
    # every Gluon backward variant's and the one-pass Triton one's codes too (a register
    # pair follows `regs`)
    from mhfgen.variants.flash_mhf_bwd_dkv_ws import BwdDkvWsConfig
    from mhfgen.variants.flash_mhf_bwd_dkvt_ws import BwdDkvtWsConfig
    from mhfgen.variants.flash_mhf_bwd_dq_ws import BwdDqWsConfig
    from mhfgen.variants.flash_mhf_bwd_fused import Config as FusedConfig
    from mhfgen.variants.flash_mhf_bwd_ws import BwdWsConfig
    from mhfgen.variants.flash_mhf_bwdt_ws import BwdtWsConfig
    from mhfgen.variants.flash_mhf_fwd_fp8_ws import Fp8WsConfig
    from mhfgen.variants.flash_mhf_fwd_ws import WsConfig as FwdWsConfig

    for config in (
        FusedConfig(
            token_splits=2,
            transpose_acc=True,
            sigmoid="tanh",
            head_chunk=2,
            tma=True,
            head_dim_split="pad",
        ),
        BwdWsConfig(token_splits=2, sigmoid="exp", dq_vec=True, head_chunk=2),
        BwdDkvWsConfig(stages=3, token_splits=2, sigmoid="exp"),
        BwdDkvWsConfig(split="rows", joint_scores=True, joint_grads=True),
        BwdDqWsConfig(stages=5, sigmoid="exp"),
        BwdDqWsConfig(wait_dq=False),
        BwdDqWsConfig(wait_dq=True, early_scores=True),
        BwdDkvtWsConfig(wg_rows=64, token_splits=2),
        BwdtWsConfig(token_splits=2, dq_vec=True, head_chunk=2),
        # and the Gluon forwards' (consumers x warps: code `x`)
        FwdWsConfig(pingpong=True, joint_scores=True, unroll_tiles=2, group_heads=2),
        Fp8WsConfig(p_operand="registers", sigmoid="exp"),
        Fp8WsConfig(consumers=1, inter_splits=8, staged_scales=True),
        Fp8WsConfig(consumers=1, inter_splits=8, staged_scales=True, swap_ab=16),
        Fp8WsConfig(act_scale="running"),
        Fp8WsConfig(p_buffers=2),
    ):
        for part in config.describe().split():
            if re.fullmatch(r"\d+x\d+w", part):
                assert "x" in codes
            elif "/" not in part:
                assert part.rstrip("0123456789") in codes, part
    readme = (ROOT / "README.md").read_text()
    scripting = (ROOT / "docs" / "SCRIPTING.md").read_text()
    for code in codes:
        assert f"`{code}`" in readme and f"| `{code}` |" in scripting, code


def test_show_neither_records_nor_tunes(tmp_path, monkeypatch, capsys):
    record = tmp_path / "rec.jsonl"
    monkeypatch.setenv("MHFGEN_RECORD", str(record))
    monkeypatch.setenv("MHFGEN_TUNE_ON_MISS", "1")
    assert main(["show", *PROBLEM, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kernels"][FWD]["dispatch"]["source"] == "heuristic"
    assert not record.exists() and not paths.user_db_path().exists()
    assert os.environ["MHFGEN_RECORD"] == str(record)  # restored
