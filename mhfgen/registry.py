"""The kernel registry: every kernel variant, by name stem, and the ops they implement.

An *op* is one piece of the FlashMHF computation with fixed inputs and outputs:

    fwd      o = FlashMHF(q, k, u, v, r)                       (q, k, u, v, r) -> o
    bwd_dq   dq, dr for an output gradient do                  (q, k, u, v, r, do) -> dq, dr
    bwd_dkv  dk, du, dv for an output gradient do              (q, k, u, v, r, do) -> dk, du, dv
    bwd      every gradient in one pass                        (q, k, u, v, r, do) -> dq, dr, dk, du, dv

The backward runs either `bwd` or the split pair `bwd_dq` + `bwd_dkv` (mhfgen.kernels.
dispatched.backward decides per call: deterministic runs take the split pair).

A *variant* is one kernel implementing an op, in three files side by side: a module
(mhfgen/variants/<stem>.py: its config type, support checks, resource estimates,
launcher, and a `Variant` subclass it passes to `register(...)`), its template
(<stem>.py.jinja) and its search space (<stem>.space.toml). Everything the rest
of mhfgen knows about a kernel (its typed config, static template parameters, resource
estimates, heuristic default, pruning rules, FLOP count, outputs) is asked of the
variant; codegen, heuristics, resources, the tuner, the dispatcher and the CLI switch on
no kernel name. An op may have several variants (a Triton-language one and a Gluon one,
say): the dispatcher picks among those whose `unsupported()` is None (docs/ARCHITECTURE.md).

The modules of mhfgen/variants are imported on the first registry lookup, so adding a
module there is the whole registration; code outside the package (a plugin, a test) calls
`register` itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .config_fields import check_fields
from .env import flag
from .spec import DTYPES, INTERPRETER, SPLIT_MAX, KernelSpec


@dataclass(frozen=True)
class Op:
    """One op: its name, the short name the CLI takes, what it computes, and whether a
    tune that names no kernels tunes it (`default_tuned`; the one-pass backward is opt-in:
    `--kernels bwd`)."""

    name: str
    short: str
    description: str
    default_tuned: bool = True


#: the ops, in the order a training step runs them
OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("fwd", "fwd", "forward: o"),
        Op("bwd_dq", "dq", "backward: dq and dr"),
        Op("bwd_dkv", "dkv", "backward: dk, du and dv"),
        Op("bwd", "bwd", "backward in one pass: dq, dr, dk, du and dv", default_tuned=False),
    )
}


def default_ops() -> list[str]:
    """The ops a tune that names no kernels tunes (`mhfgen tune` without --kernels)."""
    return [name for name, op in OPS.items() if op.default_tuned]


#: families of kernel source: the Triton language, or Gluon (Triton's explicit-layout,
#: warp-specialised dialect, triton.experimental.gluon), which needs a real GPU
FAMILIES = ("triton", "gluon")


class RegistryError(ValueError):
    """An unknown variant or op, or a variant that cannot be registered."""


@dataclass(frozen=True)
class VariantConfig:
    """Base of every variant's launch config: a frozen dataclass of only the fields that
    variant uses (the tuner's knobs). Subclasses set `variant` to their stem."""

    variant: ClassVar[str] = ""
    #: field -> the values it may take, for the fields check_typed does not check by their
    #: type alone; a class's entries add to (or replace) its bases'
    choices: ClassVar[dict] = {}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, partial: bool = False) -> VariantConfig:
        """The config of `data`. Every field of this variant must be present (a stored or
        imported config that lacks one is refused, not defaulted) unless `partial`, where
        missing fields take their defaults (`mhfgen codegen --config`). Any other field is
        an error (mhfgen.schema2 reads the configs of schema-2 data). Fields a variant
        added after its configs were stored (its `added_fields`, name -> value) may be
        missing: they then take that value, which generates the code the config had."""
        if not isinstance(data, dict):
            raise ValueError(
                f"{cls.variant} config must be a JSON object, got {type(data).__name__}"
            )
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.variant} config: unknown fields {unknown}")
        added = getattr(cls, "added_fields", {})
        missing = [n for n in cls.field_names() if n not in data and n not in added]
        if missing and not partial:
            raise ValueError(f"{cls.variant} config: missing fields {missing}")
        if partial:
            return cls(**data)
        legacy = {n: v for n, v in added.items() if n not in data}
        return cls(**{**cls.legacy_fields(legacy, data), **data})

    @classmethod
    def legacy_fields(cls, legacy: dict, data: dict) -> dict:
        """The added fields (name -> value) a stored config `data` without them takes:
        their `added_fields` values, except the variant's `split_fields` where `data` does
        not split the intermediate dimension (inter_splits 1 or absent): those change no
        generated code there, so they take their defaults and the config equals one made
        today."""
        if data.get("inter_splits", 1) == 1:
            for name in getattr(cls, "split_fields", ()):
                legacy.pop(name, None)
        return legacy

    def check_fields(self, **rules) -> None:
        """ValueError for the first of these fields whose value breaks its rule
        (config_fields.check_fields: `bool`, an int maximum, or the allowed values), named
        as '<variant> config: <field>'."""
        check_fields(self, f"{self.variant} config: ", **rules)

    def check_typed(self, *names: str) -> None:
        """check_fields of these fields, in order: one of its `choices` where a class of
        the config names the field, else by its type: True or False for a bool, a
        positive int up to SPLIT_MAX (1024) for an int."""
        choices: dict = {}
        for klass in reversed(type(self).__mro__):
            choices.update(klass.__dict__.get("choices", {}))
        by_type = {"bool": bool, "int": SPLIT_MAX}
        rules = {}
        for f in dataclasses.fields(self):
            if f.name in names:
                rules[f.name] = choices.get(f.name, by_type.get(f.type))
                if rules[f.name] is None:
                    raise TypeError(f"{type(self).__name__}.{f.name} ({f.type}) needs its choices")
        self.check_fields(**{name: rules[name] for name in names})

    def check_for(self, spec: KernelSpec) -> None:
        """Raise ValueError if this config cannot run `spec` (independent of the shape)."""

    def describe(self) -> str:
        """A compact one-line form for tables (the fields away from their default)."""
        default = type(self)()
        return (
            " ".join(f"{k}={v}" for k, v in self.as_dict().items() if getattr(default, k) != v)
            or "default"
        )


class Variant:
    """One kernel variant. Subclasses set the class attributes and override the methods
    that raise NotImplementedError; one instance is registered per stem.

    stem:        the name stem, through every layer: its module mhfgen/variants/<stem>.py
                 and beside it <stem>.py.jinja and <stem>.space.toml, the database's
                 `variant` column, the generated kernel `<stem>_kernel`.
    op:          the op it implements (a key of OPS).
    family:      'triton' or 'gluon'.
    Config:      its VariantConfig subclass.
    targets:     target prefixes it compiles for ('sm9' matches sm90 and sm90a;
                 'interpreter'), or None for every target.
    dtypes:      the dtypes (spec names) it accepts.
    launcher:    'module:function' of its launcher, called as
                 launcher(q, k, u, v, r[, do], config=...) (default: the function named
                 as its stem in the module that defines its class).
    entries:     the @jit functions of its module that launchers load (default
                 `<stem>_kernel`).
    template_dir: where its template and space file live (None: beside the module that
                 defines the class, as the built-in variants' are in mhfgen/variants/).
    preference:  order among the variants of one op for the heuristic fallback (lowest
                 first among those that support the call); rank(spec) may refine it per
                 spec, where measurements put a variant first on some shapes only.
    flop_factor: dot FLOPs per call in units of tokens * H * I * D.
    outputs:     output names in the order the launcher returns them (the tuner's answer
                 check compares them with the float64 reference's of the same name).
    takes_grad:  the launcher takes the output gradient `do` after r.
    schema2_kernel: the `kernel` name its records had in tuning data of schema 1 and 2
                 (mhfgen.schema2 reads those records as this variant's), or None.
    quantises_activations: the kernel rounds the activations (q, the activation tile) to
                 FP8 as well as reading FP8 weights: its outputs are checked against
                 mhfgen.tolerances.FP8_ACTIVATIONS_BAR (tolerances.tolerance_for), and
                 MHFGEN_FP8_ACTIVATIONS=0 leaves it out of usable().
    """

    stem: ClassVar[str]
    op: ClassVar[str]
    family: ClassVar[str] = "triton"
    Config: ClassVar[type]
    targets: ClassVar[tuple[str, ...] | None] = None
    dtypes: ClassVar[tuple[str, ...]] = tuple(DTYPES)
    launcher: ClassVar[str | Callable]  # see launch_fn
    entries: ClassVar[tuple[str, ...]] = ()
    template_dir: ClassVar[Path | None] = None
    preference: ClassVar[int] = 100
    flop_factor: ClassVar[int]
    outputs: ClassVar[tuple[str, ...]]
    takes_grad: ClassVar[bool] = False
    schema2_kernel: ClassVar[str | None] = None
    quantises_activations: ClassVar[bool] = False

    # -- what it is --------------------------------------------------------------
    @property
    def needs_gpu(self) -> bool:
        """Whether it cannot run in Triton's interpreter (Gluon kernels cannot)."""
        return self.family != "triton"

    @property
    def gradient(self) -> bool:
        """Whether its outputs are gradients (the tuner's answer check then uses the
        gradient tolerance)."""
        return self.op != "fwd"

    @property
    def template_name(self) -> str:
        return f"{self.stem}.py.jinja"

    def templates_dir(self) -> Path:
        """`template_dir`, else the folder of the module that defines the variant's class
        (its template and space file sit beside it)."""
        if self.template_dir is not None:
            return self.template_dir
        module = sys.modules.get(type(self).__module__)
        if getattr(module, "__file__", None) is None:
            raise RegistryError(
                f"{self.stem}: its class's module {type(self).__module__!r} has no file; "
                f"set template_dir to the folder of its template and space file"
            )
        return Path(module.__file__).parent

    def space_path(self) -> Path:
        return self.templates_dir() / f"{self.stem}.space.toml"

    def entry_names(self) -> tuple[str, ...]:
        return self.entries or (f"{self.stem}_kernel",)

    def supports(self, spec: KernelSpec, tokens: int | None) -> str | None:
        """Why this variant cannot run `spec` at `tokens` tokens (None: at any count it
        can run) beyond its targets and dtypes (None: it can). Override for shape limits;
        a limit on small token counts that only says which variant dispatch prefers
        applies where `tokens` is given."""
        return None

    def unsupported(self, spec: KernelSpec, tokens: int | None = None) -> str | None:
        """Why this variant cannot run `spec` (at `tokens` tokens, when given), or None:
        its targets, dtypes, the interpreter for a variant that needs a GPU, supports()."""
        if spec.target == INTERPRETER and self.needs_gpu:
            return f"{self.stem} ({self.family}) cannot run in Triton's interpreter"
        if self.targets is not None and not spec.target.startswith(self.targets):
            return f"{self.stem} runs on {', '.join(self.targets)}, not {spec.target}"
        if spec.dtype not in self.dtypes:
            return f"{self.stem} takes {', '.join(self.dtypes)}, not {spec.dtype}"
        return self.supports(spec, tokens)

    def rank(self, spec: KernelSpec) -> int:
        """This variant's place among its op's variants for `spec` (lowest first): the
        heuristic fallback takes the first that supports the call. `preference` unless
        overridden."""
        return self.preference

    # -- configs -----------------------------------------------------------------
    def coerce(self, config) -> VariantConfig:
        """`config`, checked to be this variant's Config (TypeError naming both types
        otherwise)."""
        if isinstance(config, self.Config):
            return config
        got = (
            f"a {config.variant} config"
            if isinstance(config, VariantConfig)
            else type(config).__name__
        )
        raise TypeError(
            f"config of {self.stem} must be a {self.Config.__module__}."
            f"{self.Config.__qualname__}, got {got}"
        )

    def config_from_dict(self, data: dict, partial: bool = False) -> VariantConfig:
        """The variant's config of a JSON object (see VariantConfig.from_dict)."""
        if not isinstance(data, dict):
            raise ValueError(f"{self.stem} config must be a JSON object, got {type(data).__name__}")
        return self.Config.from_dict(dict(data), partial=partial)

    def check(self, spec: KernelSpec, config) -> VariantConfig:
        """The coerced config, checked against `spec` (ValueError when it cannot run)."""
        config = self.coerce(config)
        config.check_for(spec)
        return config

    # -- what codegen, heuristics, resources and the tuner ask -------------------
    def static_params(self, spec: KernelSpec, config) -> dict:
        """The template's parameters: the parts of (spec, config) that change the code."""
        raise NotImplementedError

    def shared_memory(self, spec: KernelSpec, config) -> int:
        """Bytes of shared memory one program needs (the variant's fitted formula)."""
        raise NotImplementedError

    def registers(self, spec: KernelSpec, config) -> float:
        """fp32 values one thread keeps live (the variant's estimate)."""
        raise NotImplementedError

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> VariantConfig:
        """The heuristic config: valid for every spec and shape the variant supports."""
        raise NotImplementedError

    def prune_reason(self, spec: KernelSpec, config, tokens: int, sm_count: int) -> str | None:
        """Why `config` is not worth compiling for this problem (shape- and
        variant-specific rules; resources are checked by mhfgen.tuning.space), or None."""
        return None

    # -- launching ---------------------------------------------------------------
    def launch_fn(self) -> Callable:
        """The launcher function (imported on first use)."""
        fn = self.__dict__.get("_launch_fn")
        if fn is None:
            raw = next(
                (
                    cls.__dict__["launcher"]
                    for cls in type(self).__mro__
                    if "launcher" in cls.__dict__
                ),
                f"{type(self).__module__}:{self.stem}",
            )
            if isinstance(raw, staticmethod):
                raw = raw.__func__
            if callable(raw):  # a function set as the class attribute
                fn = raw
            else:
                module, _, name = raw.partition(":")
                fn = getattr(importlib.import_module(module), name)
            self.__dict__["_launch_fn"] = fn
        return fn

    def launch(self, *tensors, config=None):
        """Run the launcher on (q, k, u, v, r[, do]) with `config` (None: dispatch's)."""
        return self.launch_fn()(*tensors, config=config)

    def __repr__(self) -> str:
        return f"<variant {self.stem} ({self.family}, op {self.op})>"


_variants: dict[str, Variant] = {}
_discovered = False
_discovering = False
_lock = threading.RLock()


def _discover() -> None:
    """Import every module of mhfgen.variants (each registers its variant) once."""
    global _discovered, _discovering
    if _discovered:
        return
    with _lock:
        if _discovered or _discovering:
            return
        _discovering = True
        try:
            from . import variants

            for info in sorted(pkgutil.iter_modules(variants.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{variants.__name__}.{info.name}")
            _discovered = True
        finally:
            _discovering = False


def register(variant: Variant, replace: bool = False) -> Variant:
    """Add `variant` to the registry (RegistryError for a taken stem unless `replace`,
    an unknown op or family, or a Config that is not a VariantConfig)."""
    if not isinstance(variant, Variant):
        raise RegistryError(f"register() takes a Variant instance, got {type(variant).__name__}")
    if variant.op not in OPS:
        raise RegistryError(
            f"{variant.stem}: unknown op {variant.op!r}; expected one of {', '.join(OPS)}"
        )
    if variant.family not in FAMILIES:
        raise RegistryError(f"{variant.stem}: unknown family {variant.family!r}")
    if not (isinstance(variant.Config, type) and issubclass(variant.Config, VariantConfig)):
        raise RegistryError(f"{variant.stem}: Config must subclass VariantConfig")
    _discover()  # the built-in variants first (no-op while they register themselves)
    with _lock:
        if variant.stem in _variants and not replace:
            raise RegistryError(f"variant {variant.stem!r} is registered already")
        _variants[variant.stem] = variant
        notify = _discovered  # nothing is built on the registry before discovery ends
    if notify:
        _clear_dependents()
    return variant


def unregister(stem: str) -> None:
    """Remove a variant (plugins and tests that registered one)."""
    with _lock:
        _variants.pop(stem, None)
    _clear_dependents()


def _clear_dependents() -> None:
    """Caches keyed by the set of variants (template hashes, loaded spaces)."""
    for clear in _on_change:
        clear()


#: callbacks run when the set of variants changes
_on_change: list[Callable[[], None]] = []


def on_change(fn: Callable[[], None]) -> Callable[[], None]:
    _on_change.append(fn)
    return fn


def get(stem: str) -> Variant:
    """The variant named `stem` (RegistryError naming the known ones otherwise)."""
    _discover()
    variant = _variants.get(stem)
    if variant is None:
        raise RegistryError(
            f"unknown kernel variant {stem!r}; expected one of {', '.join(stems())}"
        )
    return variant


def all_variants() -> list[Variant]:
    """Every variant: by op (in OPS order), then preference, then stem."""
    _discover()
    order = list(OPS)
    return sorted(_variants.values(), key=lambda v: (order.index(v.op), v.preference, v.stem))


def stems() -> tuple[str, ...]:
    return tuple(v.stem for v in all_variants())


def variants_for(op: str) -> list[Variant]:
    """The variants of `op`, preferred first (RegistryError for an unknown op)."""
    if op not in OPS:
        raise RegistryError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    return [v for v in all_variants() if v.op == op]


def op_named(name: str) -> str:
    """The op of a name the CLI or an old record may use: an op ('bwd_dq'), its short
    name ('dq') or a variant stem ('flash_mhf_bwd_dq')."""
    if name in OPS:
        return name
    for op in OPS.values():
        if op.short == name:
            return op.name
    return get(name).op


def default_config(kernel: str, spec: KernelSpec, tokens: int, sm_count: int) -> VariantConfig:
    """The built-in (heuristic) config of variant `kernel` for `spec` at `tokens` tokens on
    a GPU of `sm_count` multiprocessors (any positive number for the interpreter): valid
    for every spec and shape the variant supports, used where no tuning database has
    better (each variant's Variant.default_config)."""
    return get(kernel).default_config(spec, tokens, sm_count)


#: off (0/false/no/off): no variant that quantises activations to FP8 is usable, so
#: mhfgen.flash_mhf_fp8 keeps its activations in 16 bits everywhere (mhfgen.env.flag)
FP8_ACTIVATIONS_ENV = "MHFGEN_FP8_ACTIVATIONS"


def fp8_activations_enabled() -> bool:
    """Whether variants that quantise activations to FP8 may be used: MHFGEN_FP8_ACTIVATIONS
    unset or on (mhfgen.env.flag)."""
    return flag(FP8_ACTIVATIONS_ENV, default=True)


def usable(op: str, spec: KernelSpec, tokens: int | None = None) -> list[Variant]:
    """The variants of `op` that can run `spec` (at `tokens` tokens), preferred first
    (by rank(spec)); without those that quantise activations to FP8 where
    MHFGEN_FP8_ACTIVATIONS is off (fp8_activations_enabled)."""
    fp8_activations = fp8_activations_enabled()
    return sorted(
        [
            v
            for v in variants_for(op)
            if v.unsupported(spec, tokens) is None
            and (fp8_activations or not v.quantises_activations)
        ],
        key=lambda v: v.rank(spec),
    )
