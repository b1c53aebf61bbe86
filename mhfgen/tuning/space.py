"""Search spaces of the launch parameters, loaded from data beside the templates, and the
constraint function that prunes impossible candidates before anything compiles.

`templates/<kernel>.space.toml` holds one section per GPU family: [default], then
[<target>] sections ([sm90], [sm80], [interpreter]) that replace the keys they name. Each
key is a LaunchConfig field with its candidate values; "divisors" (group_heads) stands for
every divisor of H / Hkv. [<section>.limits] holds the resources `keep` checks.

`keep(kernel, spec, config, tokens, limits, sm_count)` drops a candidate when
  - a field that the kernel does not use is not at its neutral value (group_heads and
    tma for dK/dU/dV, inter_splits and prefetch_scores outside the forward, token_splits
    and transpose_acc outside dK/dU/dV);
  - group_heads does not divide H / Hkv;
  - a tile is larger than the problem: BLOCK_M > max(16, next_pow2(rows)) with rows the
    (token, head) rows a program walks, or BLOCK_N > max(16, next_pow2(De));
  - it generates the same code as another candidate: head_dim_split='pad' where D is a
    power of two, prefetch_scores where BLOCK_N does not divide De;
  - a split is not sensible: inter_splits above the intermediate tiles, token_splits
    above the row blocks, or a split that makes more than 8 programs per multiprocessor;
  - the config does not fit the spec (LaunchConfig.check_for: tma needs sm90+ and
    16-byte head_dim rows);
  - mhfgen.resources.shared_memory_estimate (fitted to Triton's allocations) exceeds the
    family's shared_memory limit (the [limits] value, else mhfgen.resources' limit);
  - the fp32 values a thread keeps live exceed the register limit:
        fwd:  (BM*Dp + 2*BM*BN) / (32 * num_warps)    accumulator, S and A tiles
        dq:   (BM*Dp + 3*BM*BN) / (32 * num_warps)    dq accumulator, S, A and dP tiles
        dkv:  (3*BN*Dp + 3*BM*BN) / (32 * num_warps)  dk/du/dv accumulators, S, A, dP tiles
              (2*BN*Dp with split_grads: the dK+dU kernel holds two accumulators)

The estimates are deliberately simple; a candidate they let through that still fails to
compile becomes a failed trial with Triton's reason, never a crashed run.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Iterable, Mapping

from .. import paths
from ..kernels.common import cdiv, intermediate_blocks
from ..resources import padded_head_dim, shared_memory_estimate, shared_memory_limit
from ..spec import KERNELS, KernelSpec, LaunchConfig, head_dim_chunks

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

#: LaunchConfig fields a kernel does not use, with the only value they may take there
UNUSED_FIELDS: dict[str, dict[str, object]] = {
    "flash_mhf_fwd": {"token_splits": 1, "transpose_acc": False, "split_grads": False},
    "flash_mhf_bwd_dq": {"inter_splits": 1, "token_splits": 1, "transpose_acc": False,
                         "prefetch_scores": False, "split_grads": False},
    "flash_mhf_bwd_dkv": {"inter_splits": 1, "group_heads": 1, "tma": False,
                          "prefetch_scores": False, "warp_specialize": False},
}
#: programs per multiprocessor above which a split only adds partial-sum traffic
MAX_PROGRAMS_PER_SM = 8
_FIELDS = tuple(f.name for f in fields(LaunchConfig))


class SpaceError(ValueError):
    """A search-space file that cannot be used (bad TOML, unknown field, bad value)."""


@dataclass(frozen=True)
class Limits:
    """Resources of one program on a GPU family; None means unlimited."""

    shared_memory: int | None = None
    registers_per_thread: int | None = None


@dataclass(frozen=True)
class SearchSpace:
    """The candidate values of each LaunchConfig field for one kernel on one family.

    values: field -> tuple of candidates, or the string "divisors" (group_heads only).
    """

    kernel: str
    family: str
    values: Mapping[str, tuple | str]
    limits: Limits

    def choices(self, spec: KernelSpec, extra: Iterable[LaunchConfig] = ()) -> dict[str, tuple]:
        """Field -> sorted candidate values for `spec`, "divisors" resolved, and the
        values of the `extra` configs (the built-in default) added."""
        out: dict[str, set] = {}
        for name in _FIELDS:
            raw = self.values.get(name)
            if raw == "divisors":
                vals = {d for d in range(1, spec.group + 1) if spec.group % d == 0}
            elif raw is None:
                vals = {getattr(LaunchConfig(), name)}
            else:
                vals = set(raw)
            out[name] = vals
        for config in extra:
            for name in _FIELDS:
                out[name].add(getattr(config, name))
        return {name: tuple(sorted(vals)) for name, vals in out.items()}

    def candidates(self, spec: KernelSpec, tokens: int, sm_count: int,
                   extra: Iterable[LaunchConfig] = ()) -> list[LaunchConfig]:
        """Every config of the grid that `keep` accepts, in a deterministic order."""
        choices = self.choices(spec, extra)
        out = []
        for combo in itertools.product(*(choices[name] for name in _FIELDS)):
            try:
                config = LaunchConfig(**dict(zip(_FIELDS, combo)))
            except ValueError:
                continue
            if keep(self.kernel, spec, config, tokens, self.limits, sm_count):
                out.append(config)
        return out


def _space_path(kernel: str):
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    return paths.templates_dir() / f"{kernel}.space.toml"


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


@lru_cache(maxsize=None)
def _read(kernel: str) -> dict:
    path = _space_path(kernel)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if tomllib is not None else parse_space_toml(text)
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise SpaceError(f"{path}: {exc}") from exc
    if "default" not in data:
        raise SpaceError(f"{path}: no [default] section")
    return data


def _check_section(path, name: str, section: dict) -> None:
    for key, value in section.items():
        if key == "limits":
            unknown = set(value) - {f.name for f in fields(Limits)}
            if unknown:
                raise SpaceError(f"{path}: [{name}.limits] has unknown keys {sorted(unknown)}")
            continue
        if key not in _FIELDS:
            raise SpaceError(f"{path}: [{name}] {key} is not a LaunchConfig field")
        if value == "divisors" and key == "group_heads":
            continue
        if not isinstance(value, list) or not value:
            raise SpaceError(f"{path}: [{name}] {key} must be a non-empty list")


def load_space(kernel: str, target: str) -> SearchSpace:
    """The search space of `kernel` for a target ('sm90', 'sm80', 'interpreter', ...):
    [default] with the keys of the [<target>] section, if the file has one, replaced."""
    data = _read(kernel)
    path = _space_path(kernel)
    merged = dict(data["default"])
    _check_section(path, "default", merged)
    family = "default"
    if target in data:
        _check_section(path, target, data[target])
        merged.update(data[target])
        family = target
    limits = Limits(**merged.pop("limits", {}))
    values = {k: (v if isinstance(v, str) else tuple(v)) for k, v in merged.items()}
    return SearchSpace(kernel, family, values, limits)


def _pow2_ceil(x: int) -> int:
    return 1 << (max(1, x) - 1).bit_length()


def register_estimate(kernel: str, spec: KernelSpec, config: LaunchConfig) -> float:
    """fp32 values a thread keeps live (formulas in the module doc)."""
    bm, bn, dp = config.block_m, config.block_n, padded_head_dim(spec, config)
    if kernel == "flash_mhf_fwd":
        live = bm * dp + 2 * bm * bn
    elif kernel == "flash_mhf_bwd_dq":
        live = bm * dp + 3 * bm * bn
    else:
        live = (2 if config.split_grads else 3) * bn * dp + 3 * bm * bn
    return live / (32 * config.num_warps)


def prune_reason(kernel: str, spec: KernelSpec, config: LaunchConfig, tokens: int,
                 limits: Limits, sm_count: int) -> str | None:
    """Why `config` is not worth compiling for `kernel`, `spec` and `tokens` tokens on a
    device with `sm_count` multiprocessors and `limits`; None when it is."""
    for name, neutral in UNUSED_FIELDS[kernel].items():
        if getattr(config, name) != neutral:
            return f"{name} does not apply to {kernel}"
    try:
        config.check_for(spec)
    except ValueError as exc:
        return str(exc)
    rows = max(1, tokens) * (spec.group if kernel == "flash_mhf_bwd_dkv" else config.group_heads)
    if config.block_m > max(16, _pow2_ceil(rows)):
        return f"block_m={config.block_m} is larger than the {rows} rows"
    if (spec.target.startswith("sm9") and config.split_grads and config.transpose_acc
            and config.num_stages == 1):
        # seen on an H200 with Triton 3.6 (2026-11-28): an illegal memory access at
        # block_n = 32 and block_m = 64 / 128; the interpreter runs it correctly
        return "split_grads with transpose_acc and one stage faults on sm90 (Triton 3.6)"
    if spec.target.startswith("sm9") and config.block_m < 64 and rows >= 64 * 4:
        # a Hopper warpgroup MMA has M = 64: smaller row blocks only pay off for few rows
        return f"block_m={config.block_m} is below the 64-row warpgroup MMA for {rows} rows"
    if config.block_n > max(16, _pow2_ceil(spec.expert_dim)):
        return f"block_n={config.block_n} is larger than expert_dim={spec.expert_dim}"
    if config.head_dim_split == "pad" and \
            head_dim_chunks(spec.head_dim, "pad") == head_dim_chunks(spec.head_dim, "chunks"):
        return "head_dim_split='pad' generates the same code as 'chunks'"
    if config.prefetch_scores and spec.expert_dim % config.block_n:
        return "prefetch_scores applies only when block_n divides expert_dim"
    if config.warp_specialize and spec.expert_dim % config.block_n:
        return "warp_specialize applies only when block_n divides expert_dim"
    if config.warp_specialize and config.prefetch_scores:
        return "warp_specialize does not apply to the prefetch_scores loop"
    budget = MAX_PROGRAMS_PER_SM * max(1, sm_count)
    if kernel == "flash_mhf_fwd" and config.inter_splits > 1:
        tiles = (intermediate_blocks(spec, config.block_n)
                 if spec.expert_dim % config.block_n == 0 else spec.experts)
        if config.inter_splits > tiles:
            return f"inter_splits={config.inter_splits} exceeds the {tiles} intermediate tiles"
        programs = cdiv(rows, config.block_m) * (spec.heads // config.group_heads)
        if programs * config.inter_splits > budget:
            return f"inter_splits={config.inter_splits} makes more than {budget} programs"
    if kernel == "flash_mhf_bwd_dkv" and config.token_splits > 1:
        if config.token_splits > cdiv(rows, config.block_m):
            return f"token_splits={config.token_splits} exceeds the row blocks"
        programs = intermediate_blocks(spec, config.block_n) * spec.kv_heads
        if programs * config.token_splits > budget:
            return f"token_splits={config.token_splits} makes more than {budget} programs"
    smem_limit = (limits.shared_memory if limits.shared_memory is not None
                  else shared_memory_limit(spec.target))
    smem = shared_memory_estimate(kernel, spec, config)
    if smem > smem_limit:
        return f"needs ~{smem} bytes of shared memory, limit {smem_limit}"
    if limits.registers_per_thread is not None:
        regs = register_estimate(kernel, spec, config)
        if regs > limits.registers_per_thread:
            return (f"keeps ~{regs:.0f} fp32 values per thread live, "
                    f"limit {limits.registers_per_thread} registers")
    return None


def keep(kernel: str, spec: KernelSpec, config: LaunchConfig, tokens: int, limits: Limits,
         sm_count: int) -> bool:
    """True when `config` is worth compiling (see prune_reason)."""
    return prune_reason(kernel, spec, config, tokens, limits, sm_count) is None
