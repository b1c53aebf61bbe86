"""Strict config fields: no value is converted into another meaning (2.0 blocks, "false"
flags, 2**40 tiles, missing fields), and nothing from outside reaches generated source."""

import dataclasses
import json

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from cases import SMALL_FLAGS

from mhfgen import codegen
from mhfgen.cli import main
from mhfgen.config_fields import (
    choice,
    power_of_two,
    require_fields,
    strict_bool,
    strict_float,
    strict_int,
    strict_str,
)
from mhfgen.spec import TARGETS, KernelSpec
from mhfgen.variants.flash_mhf_bwd_dkv import Config as Dkv
from mhfgen.variants.flash_mhf_bwd_dq import Config as Dq
from mhfgen.variants.flash_mhf_fwd import Config as Fwd

TINY = KernelSpec(2, 1, 32, 2, 32, "float32", "interpreter")


@pytest.mark.parametrize(
    "check,value",
    [
        (lambda v: strict_int(v, "f"), 2.0),
        (lambda v: strict_int(v, "f"), True),
        (lambda v: strict_int(v, "f"), "2"),
        (lambda v: strict_int(v, "f", 1, 8), 9),
        (lambda v: power_of_two(v, "f", 16, 1024), 48),
        (lambda v: power_of_two(v, "f", 16, 1024), 2**40),
        (lambda v: power_of_two(v, "f", 16, 1024), 64.0),
        (lambda v: strict_bool(v, "f"), "false"),
        (lambda v: strict_bool(v, "f"), 0),
        (lambda v: choice(v, "f", (1, 2, 4)), True),  # True == 1, but it is not 1
        (lambda v: choice(v, "f", ("chunks", "pad")), "Chunks"),
        (lambda v: strict_float(v, "f"), "fast"),
        (lambda v: strict_float(v, "f"), [1]),
        (lambda v: strict_float(v, "f"), float("nan")),
        (lambda v: strict_float(v, "f"), 10**400),
        (lambda v: strict_float(v, "f", positive=True), 0.0),
        (lambda v: strict_str(v, "f"), 3),
        (lambda v: require_fields(v, ("a", "b"), "f"), {"a": 1}),
        (lambda v: require_fields(v, ("a",), "f"), {"a": 1, "c": 2}),
    ],
)
def test_field_checks_refuse_without_converting(check, value):
    with pytest.raises(ValueError, match="^f"):
        check(value)


def test_field_checks_return_good_values_unchanged():
    assert strict_int(3, "f", 1, 8) == 3 and power_of_two(64, "f", 16, 1024) == 64
    assert strict_bool(False, "f") is False and choice("pad", "f", ("chunks", "pad")) == "pad"
    assert strict_float(2, "f") == 2.0 and strict_float(None, "f", optional=True) is None
    require_fields({"a": 1}, ("a",), "f")


@pytest.mark.parametrize(
    "field,value",
    [
        ("block_m", 2**40),
        ("block_n", 48),
        ("block_m", 64.0),
        ("group_heads", 2.0),
        ("inter_splits", 1.5),
        ("token_splits", 0),
        ("num_stages", 2.0),
        ("num_warps", True),
        ("tma", "false"),
        ("tma", 1),
        ("split_grads", "yes"),
        ("head_dim_split", "Pad"),
    ],
)
def test_a_variant_config_refuses_values_of_another_type_or_range(field, value):
    cls = Fwd if field in Fwd.field_names() else Dkv
    with pytest.raises(ValueError, match=f"{cls.variant} config: {field}"):
        cls(**{field: value})
    full = cls().as_dict()
    with pytest.raises(ValueError, match=f"{cls.variant} config: {field}"):
        cls.from_dict({**full, field: value})


def test_a_stored_config_must_have_every_field():
    data = Fwd(block_m=32).as_dict()
    assert Fwd.from_dict(data) == Fwd(block_m=32)
    del data["tma"]
    with pytest.raises(ValueError, match=r"missing fields \['tma'\]"):
        Fwd.from_dict(data)
    # `mhfgen codegen --config` takes a partial config on purpose
    assert Fwd.from_dict({"block_m": 32}, partial=True) == Fwd(block_m=32)
    with pytest.raises(ValueError, match="JSON object"):
        Fwd.from_dict([1, 2])


@pytest.mark.parametrize(
    "field,value",
    [("heads", 2.7), ("heads", True), ("experts", 0), ("expert_dim", 2.0), ("dtype", "float64")],
)
def test_kernel_spec_refuses_values_of_another_type(field, value):
    with pytest.raises(ValueError, match=f"KernelSpec.{field}"):
        dataclasses.replace(TINY, **{field: value})


@pytest.mark.parametrize("target", ["sm12", "sm90\nimport os", "interpreter ", "", 90, None])
def test_targets_come_from_a_fixed_set(target):
    with pytest.raises(ValueError, match="KernelSpec.target must be one of"):
        dataclasses.replace(TINY, target=target)
    for good in TARGETS:
        dataclasses.replace(TINY, target=good)


def test_every_string_a_template_sees_is_from_a_fixed_set():
    """What reaches generated source: ints and bools (strictly typed), and strings that
    are members of closed sets. A string field added to either type without such a
    check fails here."""
    import typing

    closed = {
        ("KernelSpec", "dtype"),
        ("KernelSpec", "target"),
        *((c.variant, "head_dim_split") for c in (Fwd, Dq, Dkv)),
    }
    for cls in (KernelSpec, Fwd, Dq, Dkv):
        name = getattr(cls, "variant", cls.__name__)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert hints[f.name] in (int, bool, str), (name, f.name)
            if hints[f.name] is str:
                assert (name, f.name) in closed, f"{name}.{f.name}"
    config = Fwd(block_m=16, block_n=32)
    for cls in (Fwd, Dq, Dkv):
        with pytest.raises(ValueError, match="head_dim_split"):
            cls(head_dim_split="chunks\nimport os")
    source = codegen.render("flash_mhf_fwd", TINY, config)
    assert "import os" not in source


#: `mhfgen codegen` on a small problem, up to its --target value
CODEGEN = ["codegen", *SMALL_FLAGS, "--target"]


@pytest.mark.parametrize(
    "target,message",
    [
        ("interpreter\nimport os", "KernelSpec.target must be one of"),
        ("sm12", "KernelSpec.target must be one of"),
    ],
)
def test_codegen_target_is_checked_before_rendering(target, message, capsys):
    args = [*CODEGEN, target]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and len(err.strip().splitlines()) == 1


def test_codegen_config_flags_are_strict(capsys):
    args = [*CODEGEN, "interpreter"]
    assert main([*args, "--config", json.dumps({"block_m": 32, "tma": "false"})]) == 2
    assert "flash_mhf_fwd config: tma must be true or false" in capsys.readouterr().err
    assert main([*args, "--config", json.dumps({"block_m": 32})]) == 0
    assert "BLOCK_M" in capsys.readouterr().out
