"""Search spaces of the launch parameters, loaded from data beside the templates, and the
constraint function that prunes impossible candidates before anything compiles.

`<templates>/<stem>.space.toml` (the variant's template folder) holds one section per GPU
family: [default], then [<target>] sections ([sm90], [sm80], [interpreter]) that replace
the keys they name. Each key is a field of the variant's config type with its candidate
values; "divisors" (group_heads) stands for every divisor of H / Hkv. [<section>.limits]
holds the resources `keep` checks. A field not listed keeps the config type's default.

`keep(kernel, spec, config, tokens, limits, sm_count)` drops a candidate when
  - the variant cannot run the spec at that token count (Variant.unsupported) or the
    config does not fit the spec (its check_for: e.g. tma needs sm90+ and 16-byte rows);
  - the variant's own rules reject it (Variant.prune_reason: tiles larger than the
    problem, candidates that generate the same code as another, splits that are not
    sensible, configs known to fault; listed in each variant's module);
  - its shared memory estimate (Variant.shared_memory, fitted to Triton's allocations)
    exceeds the family's shared_memory limit (the [limits] value, else
    mhfgen.resources' limit of the target);
  - the fp32 values a thread keeps live (Variant.registers) exceed registers_per_thread.

The estimates are deliberately simple; a candidate they let through that still fails to
compile becomes a failed trial with Triton's reason, never a crashed run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import cache

from .. import registry
from ..resources import shared_memory_limit
from ..spec import KernelSpec

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None


class SpaceError(ValueError):
    """A search-space file that cannot be used (bad TOML, unknown field, bad value)."""


@dataclass(frozen=True)
class Limits:
    """Resources of one program on a GPU family; None means unlimited."""

    shared_memory: int | None = None
    registers_per_thread: int | None = None


@dataclass(frozen=True)
class SearchSpace:
    """The candidate values of each config field of one variant on one family.

    values: field -> tuple of candidates, or the string "divisors" (group_heads only).
    """

    kernel: str
    family: str
    values: Mapping[str, tuple | str]
    limits: Limits

    @property
    def variant(self):
        return registry.get(self.kernel)

    def choices(self, spec: KernelSpec, extra: Iterable = ()) -> dict[str, tuple]:
        """Field -> sorted candidate values for `spec`, "divisors" resolved, and the
        values of the `extra` configs (the built-in default) added."""
        config_type = self.variant.Config
        names = config_type.field_names()
        out: dict[str, set] = {}
        for name in names:
            raw = self.values.get(name)
            if raw == "divisors":
                vals = {d for d in range(1, spec.group + 1) if spec.group % d == 0}
            elif raw is None:
                vals = {getattr(config_type(), name)}
            else:
                vals = set(raw)
            out[name] = vals
        for config in extra:
            config = self.variant.coerce(config)
            for name in names:
                out[name].add(getattr(config, name))
        return {name: tuple(sorted(vals)) for name, vals in out.items()}

    def candidates(
        self, spec: KernelSpec, tokens: int, sm_count: int, extra: Iterable = ()
    ) -> list:
        """Every config of the grid that `keep` accepts, in a deterministic order (none
        when the variant cannot run the spec at all)."""
        variant = self.variant
        if variant.unsupported(spec, tokens) is not None:
            return []
        choices = self.choices(spec, extra)
        names = variant.Config.field_names()
        out = []
        for combo in itertools.product(*(choices[name] for name in names)):
            try:
                config = variant.Config(**dict(zip(names, combo)))
            except ValueError:
                continue
            if keep(self.kernel, spec, config, tokens, self.limits, sm_count):
                out.append(config)
        return out


def _space_path(kernel: str):
    return registry.get(kernel).space_path()


def parse_space_toml(text: str) -> dict:
    """The TOML subset the space files use: [section] and [section.sub] headers, `key =
    value` with value a quoted string, an int, true/false, or a one-line list of those;
    '#' comments. NOTE: only for Python 3.10 without tomli (tomllib is in 3.11+)."""

    def scalar(tok: str):
        tok = tok.strip()
        if tok in ("true", "false"):
            return tok == "true"
        if len(tok) >= 2 and tok[0] == tok[-1] == '"':
            return tok[1:-1]
        return int(tok)

    data: dict = {}
    table = data
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            if line.startswith("[") and line.endswith("]"):
                table = data
                for part in line[1:-1].strip().split("."):
                    table = table.setdefault(part.strip(), {})
                continue
            key, value = (x.strip() for x in line.split("=", 1))
            if value.startswith("["):
                inner = value.strip()[1:-1].strip()
                table[key] = [scalar(t) for t in inner.split(",") if t.strip()]
            else:
                table[key] = scalar(value)
        except ValueError as exc:
            raise ValueError(f"line {n}: cannot parse {raw!r}") from exc
    return data


@cache
def _read(kernel: str) -> dict:
    path = _space_path(kernel)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if tomllib is not None else parse_space_toml(text)
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise SpaceError(f"{path}: {exc}") from exc
    if "default" not in data and registry.get(kernel).targets is None:
        raise SpaceError(f"{path}: no [default] section")
    return data


registry.on_change(_read.cache_clear)


def _check_section(path, name: str, section: dict, kernel: str) -> None:
    config_type = registry.get(kernel).Config
    for key, value in section.items():
        if key == "limits":
            unknown = set(value) - {f.name for f in fields(Limits)}
            if unknown:
                raise SpaceError(f"{path}: [{name}.limits] has unknown keys {sorted(unknown)}")
            continue
        if key not in config_type.field_names():
            raise SpaceError(
                f"{path}: [{name}] {key} is not a field of {kernel}'s config "
                f"({', '.join(config_type.field_names())})"
            )
        if value == "divisors" and key == "group_heads":
            continue
        if not isinstance(value, list) or not value:
            raise SpaceError(f"{path}: [{name}] {key} must be a non-empty list")


def load_space(kernel: str, target: str) -> SearchSpace:
    """The search space of `kernel` for a target ('sm90', 'sm80', 'interpreter', ...):
    [default] with the keys of the [<target>] section, if the file has one, replaced. A
    variant for some targets only (Variant.targets) may have no [default]: its target
    sections are the space."""
    data = _read(kernel)
    path = _space_path(kernel)
    if "default" not in data and target not in data:
        raise SpaceError(f"{path}: no [default] section and no [{target}] section")
    merged = dict(data.get("default", {}))
    _check_section(path, "default", merged, kernel)
    family = "default"
    if target in data:
        _check_section(path, target, data[target], kernel)
        merged.update(data[target])
        family = target
    limits = Limits(**merged.pop("limits", {}))
    values = {k: (v if isinstance(v, str) else tuple(v)) for k, v in merged.items()}
    return SearchSpace(kernel, family, values, limits)


def prune_reason(
    kernel: str, spec: KernelSpec, config, tokens: int, limits: Limits, sm_count: int
) -> str | None:
    """Why `config` is not worth compiling for variant `kernel`, `spec` and `tokens`
    tokens on a device with `sm_count` multiprocessors and `limits`; None when it is."""
    variant = registry.get(kernel)
    reason = variant.unsupported(spec, tokens)
    if reason:
        return reason
    try:
        config = variant.check(spec, config)
    except ValueError as exc:
        return str(exc)
    reason = variant.prune_reason(spec, config, tokens, sm_count)
    if reason:
        return reason
    smem_limit = (
        limits.shared_memory
        if limits.shared_memory is not None
        else shared_memory_limit(spec.target)
    )
    smem = variant.shared_memory(spec, config)
    if smem > smem_limit:
        return f"needs ~{smem} bytes of shared memory, limit {smem_limit}"
    if limits.registers_per_thread is not None:
        regs = variant.registers(spec, config)
        if regs > limits.registers_per_thread:
            return (
                f"keeps ~{regs:.0f} fp32 values per thread live, "
                f"limit {limits.registers_per_thread} registers"
            )
    return None


def keep(kernel: str, spec: KernelSpec, config, tokens: int, limits: Limits, sm_count: int) -> bool:
    """True when `config` is worth compiling (see prune_reason)."""
    return prune_reason(kernel, spec, config, tokens, limits, sm_count) is None
