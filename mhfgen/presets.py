"""The reference problems (docs/CONTRACTS.md, section 1): (d_model, heads, head_dim,
intermediate, experts)."""

from __future__ import annotations

from dataclasses import dataclass

#: the dtypes a problem may name, as mhfgen.spec.DTYPES maps them to torch dtypes (here
#: without torch, for the command-line parsers; tests/test_startup.py checks they agree)
DTYPE_NAMES = ("float32", "float16", "bfloat16")
#: the FP8-weight dtype names (activations in the named 16-bit dtype, K/U/V in e4m3), as
#: mhfgen.spec.FP8_WEIGHT_DTYPES names them: forward only (serving)
FP8_DTYPE_NAMES = ("bfloat16_e4m3", "float16_e4m3")


@dataclass(frozen=True)
class Preset:
    """A reference model's layer: d_model and the intermediate size as a model config
    states them (kv_heads None: H); the per-call sizes (validation.Problem, KernelSpec)
    derive from it, with expert_dim = intermediate / experts."""

    name: str
    d_model: int
    heads: int
    head_dim: int
    intermediate: int
    experts: int
    kv_heads: int | None = None

    @property
    def expert_dim(self) -> int:
        return self.intermediate // self.experts


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("128M", 768, 8, 96, 2048, 8),
        Preset("370M", 1024, 8, 128, 2816, 11),
        Preset("1.3B", 2048, 16, 128, 5632, 22),
    )
}


def shape(name: str) -> Preset:
    """The layer a benchmark's shape name stands for: a preset's name, or one with
    '-kv<N>' appended for N kv heads (e.g. '1.3B-kv4': 4 query heads a kv head, the rest
    the preset's), as a Preset of that name whose kv_heads is set. ValueError naming the
    valid forms for anything else, and where N does not divide the preset's heads."""
    from dataclasses import replace

    base, grouped, kv = name.partition("-kv")
    if base not in PRESETS or (grouped and not kv.isdigit()):
        raise ValueError(
            f"unknown shape {name!r}: a preset ({', '.join(PRESETS)}), optionally with "
            "-kv<N> for N kv heads (e.g. 1.3B-kv4)"
        )
    preset = PRESETS[base]
    kv_heads = int(kv) if grouped else preset.kv_heads or preset.heads
    if kv_heads < 1 or preset.heads % kv_heads:
        raise ValueError(f"{name}: {kv_heads} kv heads do not divide {preset.heads} heads")
    return replace(preset, name=name, kv_heads=kv_heads)
