"""The dispatcher: exact key, then same bucket, then nearest tuned shape of the same spec
on the same GPU, then the heuristic; a cached lookup; a broken database never breaks a
call."""

import dataclasses
import logging
import sys

import mhfgen  # first: it switches Triton's interpreter on before triton is imported

# isort: split
import pytest
import torch
import triton
from cases import KERNELS

from mhfgen import dispatch
from mhfgen.codegen import template_hash
from mhfgen.registry import default_config
from mhfgen.spec import KernelSpec
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.buckets import shape_bucket
from mhfgen.tuning.db import TuningDB, TuningKey, WinnerRecord, utc_now
from mhfgen.variants.flash_mhf_bwd_dq import Config as DqConfig
from mhfgen.variants.flash_mhf_fwd import Config as FwdConfig

CPU = torch.device("cpu")
SPEC = KernelSpec(2, 2, 32, 2, 32, "float32", "interpreter")
FWD = "flash_mhf_fwd"


@pytest.fixture(autouse=True)
def fresh_dispatcher(tmp_path, monkeypatch, fresh_dispatch):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: tmp_path / "shipped.sqlite")
    monkeypatch.delenv("MHFGEN_NO_TUNED", raising=False)


def store(
    tokens,
    config,
    path=None,
    kernel=FWD,
    gpu="interpreter",
    cc="none",
    spec=SPEC,
    template=None,
    triton_version=None,
    ms=1.0,
):
    path = path or dbmod.paths.user_db_path()
    key = TuningKey.of(
        kernel,
        template or template_hash(kernel),
        spec,
        shape_bucket(tokens),
        tokens,
        gpu,
        cc,
        triton_version or triton.__version__,
    )
    with TuningDB.open(path) as db:
        db.put_winner(
            WinnerRecord(key, config, ms, 1.0, 2 * ms, 2.0, "test", 5, "0", "0", utc_now())
        )


A, B, C = (
    FwdConfig(block_m=16, block_n=16),
    FwdConfig(block_m=32, block_n=16),
    FwdConfig(block_m=64, block_n=32),
)


def test_heuristic_when_nothing_is_tuned():
    choice = dispatch.explain_choice(FWD, SPEC, 100, CPU)
    assert choice.source == "heuristic" and choice.layer is None
    assert choice.config == default_config(FWD, SPEC, 100, 1)


def test_exact_key_first():
    store(100, A)
    store(120, B)
    choice = dispatch.explain_choice(FWD, SPEC, 100, CPU)
    assert (choice.source, choice.config, choice.tuned_tokens, choice.layer) == (
        "exact",
        A,
        100,
        "user",
    )


def test_same_bucket_picks_the_nearest_token_count_in_it():
    store(70, A)  # bucket 128
    store(100, B)  # bucket 128
    store(256, C)  # bucket 256
    choice = dispatch.explain_choice(FWD, SPEC, 120, CPU)
    assert (choice.source, choice.config, choice.tuned_tokens) == ("bucket", B, 100)


def test_nearest_tuned_shape_of_the_same_spec():
    store(16, A)
    store(4096, B)
    far = dispatch.explain_choice(FWD, SPEC, 1500, CPU)  # bucket 2048: nothing tuned there
    assert (far.source, far.config) == ("nearest", B)
    near = dispatch.explain_choice(FWD, SPEC, 17, CPU)  # 17 is its own (decode) bucket
    assert (near.source, near.config) == ("nearest", A)


def test_a_nearest_shape_of_a_lower_ranked_variant_gives_way_to_the_preferred_heuristic():
    """Step 3 for an op takes the preferred variant's winners only: an FP8 decode winner of
    the weight-only forward keeps its exact token count (steps 1 and 2 take any variant's),
    and every other call gets the FP8-arithmetic Gluon forward's heuristic. A variant
    named directly is as before."""
    fp8 = KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90")
    store(64, A, spec=fp8)
    prefill = dispatch.explain_choice("fwd", fp8, 16384, CPU)
    assert (prefill.variant, prefill.source) == ("flash_mhf_fwd_fp8_ws", "heuristic")
    assert dispatch.explain_choice("fwd", fp8, 100, CPU).variant == "flash_mhf_fwd_fp8_ws"
    decode = dispatch.explain_choice("fwd", fp8, 64, CPU)  # its exact winner
    assert (decode.variant, decode.source, decode.config) == ("flash_mhf_fwd", "exact", A)
    other = dispatch.explain_choice("fwd", fp8, 8, CPU)
    assert (other.variant, other.source) == ("flash_mhf_fwd_fp8_ws", "heuristic")
    direct = dispatch.explain_choice(FWD, fp8, 100, CPU)  # the variant named: any winner
    assert (direct.variant, direct.source, direct.config) == (FWD, "nearest", A)
    # but not one its own rules refuse at the call's size (16-row blocks at 16384 rows)
    assert dispatch.explain_choice(FWD, fp8, 16384, CPU).source == "heuristic"
    wide = dataclasses.replace(B, block_m=64, block_n=64)  # a config that fits 16384 rows
    store(12000, wide, spec=fp8)  # the same bucket as 16384: a measured winner competes
    dispatch.clear_cache()
    same = dispatch.explain_choice("fwd", fp8, 16384, CPU)
    assert (same.variant, same.source, same.config) == (FWD, "bucket", wide)


def test_a_winner_from_other_token_counts_that_does_not_fit_gives_way(monkeypatch):
    """Steps 2-3 carry a config across token counts only where its variant's rules take
    it at the call's: the FP8 Gluon forward's prefill winner (no split) would leave most
    of a 132-SM GPU idle at one token, so the heuristic (with splits) runs there; at 2048
    tokens it still applies."""
    from mhfgen.variants.flash_mhf_fwd_fp8_ws import Fp8WsConfig

    monkeypatch.setattr(dispatch._device, "sm_count", lambda device: 132)
    fp8 = KernelSpec(16, 16, 128, 22, 256, "bfloat16_e4m3", "sm90")
    stem = "flash_mhf_fwd_fp8_ws"
    store(16384, Fp8WsConfig(stages=5), spec=fp8, kernel=stem)
    decode = dispatch.explain_choice("fwd", fp8, 1, CPU)
    assert (decode.variant, decode.source) == (stem, "heuristic")
    assert decode.config.inter_splits > 1
    carried = dispatch.explain_choice("fwd", fp8, 2048, CPU)
    assert (carried.source, carried.config) == ("nearest", Fp8WsConfig(stages=5))


def test_other_specs_gpus_versions_and_templates_never_match():
    other_spec = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")
    store(100, A, spec=other_spec)
    store(100, A, gpu="NVIDIA H200", cc="9.0")
    store(100, A, triton_version="0.0.1")
    store(100, A, template="0000000000000000")
    store(100, DqConfig(block_m=16, block_n=16), kernel="flash_mhf_bwd_dq")
    assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "heuristic"


def test_user_database_wins_over_shipped_at_each_step(tmp_path):
    shipped = dbmod.paths.shipped_db_path()
    store(100, A, path=shipped)
    store(100, B)
    choice = dispatch.explain_choice(FWD, SPEC, 100, CPU)
    assert (choice.config, choice.layer) == (B, "user")
    store(4096, C, path=shipped)
    dispatch.clear_cache()  # the databases are read once per process
    assert dispatch.explain_choice(FWD, SPEC, 4096, CPU).config == C  # shipped exact beats user


def test_no_tuned_env_switches_tuned_configs_off(monkeypatch):
    store(100, A)
    monkeypatch.setenv("MHFGEN_NO_TUNED", "1")
    assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "heuristic"
    monkeypatch.setenv("MHFGEN_NO_TUNED", "0")
    dispatch.clear_cache()
    assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "exact"


@pytest.mark.parametrize(
    "content", [b"not a database" * 50, b"SQLite format 3\x00" + b"\x07" * 300]
)
def test_a_broken_database_only_logs_a_warning(content, caplog):
    dbmod.paths.user_db_path().write_bytes(content)
    store(100, A, path=dbmod.paths.shipped_db_path())
    with caplog.at_level(logging.WARNING):
        choice = dispatch.explain_choice(FWD, SPEC, 100, CPU)
    assert choice.config == A and choice.layer == "shipped"
    assert "ignoring the user tuning database" in caplog.text


def test_a_config_that_does_not_fit_the_spec_is_skipped(caplog):
    store(100, FwdConfig(group_heads=2))  # SPEC has H / Hkv = 1
    with caplog.at_level(logging.WARNING):
        assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "heuristic"
    assert "does not fit" in caplog.text


def test_the_database_is_read_once_and_choices_are_cached(monkeypatch):
    store(100, A)
    calls = []
    real = dbmod.load_layered_winners

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(dbmod, "load_layered_winners", counting)
    first = dispatch.choose_config(FWD, SPEC, 100, CPU)
    for tokens in (100, 101, 5000, 1):
        for kernel in KERNELS:
            dispatch.choose_config(kernel, SPEC, tokens, CPU)
    assert len(calls) == 1
    assert dispatch.choose_config(FWD, SPEC, 100, CPU) is first
    assert dispatch._cache[(FWD, SPEC, 100, CPU)] is first


def test_launches_use_the_tuned_config(monkeypatch):
    store(6, A)
    module = sys.modules["mhfgen.variants.flash_mhf_fwd"]
    seen = []
    real = module.load_kernel

    def spy(kernel, spec, config):
        seen.append(config)
        return real(kernel, spec, config)

    monkeypatch.setattr(module, "load_kernel", spy)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 2, 32, generator=g)
    k, u, v = (torch.randn(2, 2, 32, 32, generator=g) / 6 for _ in range(3))
    r = torch.rand(1, 6, 2, 2, generator=g)
    o = module.flash_mhf_fwd(q, k, u, v, r)
    assert seen == [A]
    torch.testing.assert_close(o, mhfgen.reference.flash_mhf(q, k, u, v, r), rtol=1e-4, atol=1e-4)


def _store_with_code_hash(tokens, config, template, code):
    key = TuningKey.of(
        FWD, template, SPEC, shape_bucket(tokens), tokens, "interpreter", "none", triton.__version__
    )
    with TuningDB.open(dbmod.paths.user_db_path()) as db:
        db.put_winner(
            WinnerRecord(key, config, 1.0, 1.0, 2.0, 2.0, "test", 5, "0", "0", utc_now(), code)
        )


def test_a_winner_of_an_older_template_whose_code_is_unchanged_is_still_used():
    from mhfgen.codegen import code_hash

    _store_with_code_hash(100, B, "0ld-template", code_hash(FWD, SPEC, B))
    choice = dispatch.explain_choice(FWD, SPEC, 100, CPU)
    assert (choice.source, choice.config) == ("exact", B)


def test_a_winner_whose_code_changed_or_has_no_code_hash_is_skipped():
    _store_with_code_hash(100, B, "0ld-template", "not-the-code")
    _store_with_code_hash(120, C, "0ld-template", None)
    assert dispatch.explain_choice(FWD, SPEC, 100, CPU).source == "heuristic"
