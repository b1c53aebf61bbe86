"""Search spaces from templates/<kernel>.space.toml and the keep() constraints."""

import dataclasses

# isort: split
import pytest
from cases import KERNELS, Dkv, Fwd

from mhfgen import registry
from mhfgen.registry import default_config
from mhfgen.resources import shared_memory_estimate
from mhfgen.spec import KernelSpec
from mhfgen.tuning import space as space_mod
from mhfgen.tuning.space import Limits, SpaceError, keep, load_space, prune_reason

SM90 = KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90")
GQA = KernelSpec(16, 4, 128, 22, 256, "bfloat16", "sm90")
NO_LIMITS = Limits()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("target", ["sm90", "sm80", "sm89", "interpreter"])
def test_every_space_loads_and_yields_valid_configs(kernel, target):
    space = load_space(kernel, target)
    assert space.family == (target if target != "sm89" else "default")
    spec = dataclasses.replace(SM90, target=target, dtype="float32")
    grid = space.candidates(spec, 4096, 132)
    assert grid, "no valid config at all"
    assert len({c.to_json() for c in grid}) == len(grid), "duplicates in the grid"
    for config in grid:
        config.check_for(spec)


def test_target_sections_replace_keys_of_default():
    default, sm90 = load_space("flash_mhf_fwd", "sm89"), load_space("flash_mhf_fwd", "sm90")
    assert 256 in sm90.values["block_m"] and 256 not in default.values["block_m"]
    assert sm90.values["head_dim_split"] == default.values["head_dim_split"]  # not overridden
    assert sm90.limits.shared_memory == 232448
    assert load_space("flash_mhf_fwd", "interpreter").limits == Limits()


def test_divisors_resolve_per_spec():
    choices = load_space("flash_mhf_fwd", "sm90").choices(GQA)
    assert choices["group_heads"] == (1, 2, 4)


def test_the_default_config_joins_the_choices():
    odd = Fwd(block_m=512 // 2, block_n=16)
    choices = load_space("flash_mhf_fwd", "sm90").choices(SM90, extra=[odd])
    assert 16 in choices["block_n"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tokens", [1, 16, 4096, 16384])
def test_the_built_in_default_is_kept_on_sm90(kernel, tokens):
    config = default_config(kernel, SM90, tokens, 132)
    limits = load_space(kernel, "sm90").limits
    assert prune_reason(kernel, SM90, config, tokens, limits, 132) is None


@pytest.mark.parametrize(
    "config,tokens,expert_dim,fragment",
    [
        (Fwd(group_heads=2), 4096, 64, "group_heads"),
        (Fwd(block_m=256), 16, 64, "larger than the 16 rows"),
        (Fwd(block_n=128), 4096, 64, "larger than expert_dim"),
        (Fwd(head_dim_split="pad"), 4096, 64, "same code"),
        (Fwd(block_n=64, prefetch_scores=True), 4096, 96, "prefetch_scores"),
        (Fwd(inter_splits=2), 16384, 64, "more than 1056 programs"),
        (Fwd(block_m=16, block_n=16, inter_splits=64), 1, 64, "exceeds the 8 intermediate"),
        (Fwd(block_m=256, block_n=64, num_stages=4), 16384, 64, "shared memory"),
        (Fwd(block_m=256, block_n=64, num_warps=4, num_stages=1), 16384, 64, "registers"),
    ],
)
def test_keep_prunes_impossible_forward_configs(config, tokens, expert_dim, fragment):
    spec = KernelSpec(12, 4, 128, 2, expert_dim, "bfloat16", "sm90")
    reason = prune_reason(
        "flash_mhf_fwd", spec, config, tokens, load_space("flash_mhf_fwd", "sm90").limits, 132
    )
    assert reason is not None and fragment in reason, reason


def test_a_config_of_another_variant_is_a_type_error():
    limits = load_space("flash_mhf_fwd", "sm90").limits
    with pytest.raises(TypeError, match="got a flash_mhf_bwd_dkv config"):
        prune_reason("flash_mhf_fwd", SM90, Dkv(token_splits=2), 4096, limits, 132)
    with pytest.raises(TypeError, match="got a flash_mhf_fwd config"):
        keep("flash_mhf_bwd_dkv", SM90, Fwd(tma=True), 4096, limits, 132)
    with pytest.raises(TypeError, match="got a flash_mhf_bwd_dkv config"):
        keep("flash_mhf_bwd_dq", SM90, Dkv(transpose_acc=True), 4096, limits, 132)


def test_keep_prunes_backward_specific_fields():
    limits = load_space("flash_mhf_bwd_dkv", "sm90").limits
    reason = prune_reason(
        "flash_mhf_bwd_dkv", SM90, Dkv(block_m=64, token_splits=128), 256, limits, 132
    )
    assert "row blocks" in reason
    faulting = Dkv(block_m=64, block_n=32, num_stages=1, split_grads=True, transpose_acc=True)
    assert "faults" in prune_reason("flash_mhf_bwd_dkv", SM90, faulting, 16384, limits, 132)
    assert (
        prune_reason(
            "flash_mhf_bwd_dkv",
            SM90,
            dataclasses.replace(faulting, num_stages=2),
            16384,
            limits,
            132,
        )
        is None
    )


@pytest.mark.parametrize(
    "config,fragment",
    [
        (Fwd(block_m=16, block_n=64), "warpgroup"),
        (
            Fwd(block_m=128, block_n=64, tma=True, warp_specialize=True, prefetch_scores=True),
            "prefetch_scores loop",
        ),
    ],
)
def test_keep_prunes_sm90_specific_forward_configs(config, fragment):
    spec = KernelSpec(16, 16, 128, 22, 256, "bfloat16", "sm90")
    reason = prune_reason(
        "flash_mhf_fwd", spec, config, 16384, load_space("flash_mhf_fwd", "sm90").limits, 132
    )
    assert reason is not None and fragment in reason, reason


def test_shared_memory_limit_comes_from_the_family():
    config = Fwd(block_m=128, block_n=64, num_warps=8, num_stages=3)
    need = shared_memory_estimate("flash_mhf_fwd", SM90, config)
    assert keep("flash_mhf_fwd", SM90, config, 16384, Limits(shared_memory=need), 132)
    assert not keep("flash_mhf_fwd", SM90, config, 16384, Limits(shared_memory=need - 1), 132)


def test_interpreter_has_no_resource_limits():
    spec = dataclasses.replace(SM90, target="interpreter", dtype="float32")
    big = Fwd(block_m=256, block_n=128, num_warps=1, num_stages=8)
    assert keep(
        "flash_mhf_fwd", spec, big, 16384, load_space("flash_mhf_fwd", "interpreter").limits, 1
    )


def test_bad_space_files_raise_space_error(tmp_path, monkeypatch):
    (tmp_path / "flash_mhf_fwd.space.toml").write_text("[default]\nblock_mm = [16]\n")
    monkeypatch.setattr(type(registry.get("flash_mhf_fwd")), "template_dir", tmp_path)
    space_mod._read.cache_clear()
    try:
        with pytest.raises(SpaceError, match="block_mm is not a field of flash_mhf_fwd's config"):
            load_space("flash_mhf_fwd", "sm90")
        (tmp_path / "flash_mhf_fwd.space.toml").write_text("[sm90]\nblock_m = [16]\n")
        space_mod._read.cache_clear()
        with pytest.raises(SpaceError, match="no \\[default\\] section"):
            load_space("flash_mhf_fwd", "sm90")
        (tmp_path / "flash_mhf_fwd.space.toml").write_text("[default\n")
        space_mod._read.cache_clear()
        with pytest.raises(SpaceError):
            load_space("flash_mhf_fwd", "sm90")
    finally:
        space_mod._read.cache_clear()


def test_the_fallback_parser_reads_every_space_file_like_tomllib():
    import tomllib

    for kernel in KERNELS:
        text = registry.get(kernel).space_path().read_text()
        assert space_mod.parse_space_toml(text) == tomllib.loads(text)


@pytest.mark.parametrize("kernel", registry.stems())
def test_every_pair_of_a_spaces_values_is_a_finite_distance_apart(kernel):
    """The tuner repairs an invalid proposal with the nearest valid config
    (study.config_distance); every value of every searched field, zeros included (swap_ab
    = 0), must give a finite, symmetric distance that is zero only between equals."""
    from mhfgen.tuning.study import config_distance

    variant = registry.get(kernel)
    for target in ("sm90", "interpreter"):
        try:
            space = load_space(kernel, target)
        except (FileNotFoundError, SpaceError):
            continue
        base = variant.Config()
        for name, values in space.choices(SM90).items():
            configs = []
            for value in values:
                try:
                    configs.append(dataclasses.replace(base, **{name: value}))
                except ValueError:
                    continue
            for a in configs:
                for b in configs:
                    d = config_distance(a, b)
                    assert d == config_distance(b, a) and 0 <= d < float("inf"), (name, a, b)
                    assert (d == 0) == (getattr(a, name) == getattr(b, name)), name


def test_a_switched_off_knob_is_one_step_from_one():
    from mhfgen.tuning.study import _number_distance

    assert _number_distance(0, 1) == 1 and _number_distance(0, 16) == 5
    assert _number_distance(16, 0) == 5 and _number_distance(0, 0) == 0
    assert _number_distance(2, 8) == 2
