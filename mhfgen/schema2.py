"""Tuning data of schema 1 and 2, read into today's types.

Databases, exported JSON and timing recordings of schema 1 and 2 name one of three
kernels in a `kernel` field and store every config as one 13-field record, the union of
those kernels' launch parameters; a field a kernel did not use held its neutral value
(SCHEMA2_FIELDS). Today each record belongs to a variant (its `variant` and `op`; the
variant whose `schema2_kernel` names an old kernel took over its records) and a config
holds only its variant's fields. The database's 2 -> 3 migration
(mhfgen.tuning.db), the import of old exports (mhfgen.tuning.exchange) and the replay of
old timing recordings (mhfgen.tuning.timer) read such data through this module.
"""

from __future__ import annotations

from . import registry

#: the 13 fields of a schema-2 config, with the neutral value each held where a kernel
#: did not use it
SCHEMA2_FIELDS: dict[str, object] = {
    "block_m": 64,
    "block_n": 64,
    "num_warps": 4,
    "num_stages": 2,
    "group_heads": 1,
    "head_dim_split": "chunks",
    "inter_splits": 1,
    "token_splits": 1,
    "tma": False,
    "transpose_acc": False,
    "prefetch_scores": False,
    "split_grads": False,
    "warp_specialize": False,
}


def variant_of_kernel(kernel) -> registry.Variant | None:
    """The variant that took over the records of schema-2 kernel `kernel` (its
    `schema2_kernel`), or None."""
    for variant in registry.all_variants():
        if variant.schema2_kernel is not None and variant.schema2_kernel == kernel:
            return variant
    return None


def config(variant: registry.Variant, data: dict) -> registry.VariantConfig:
    """A stored config as `variant`'s config: its own fields (see
    VariantConfig.from_dict), plus, in a schema-2 config, the fields the variant does not
    use at their neutral value, which are dropped. ValueError for a schema-2 field away
    from its neutral value, or anything VariantConfig.from_dict refuses."""
    if not isinstance(data, dict):
        return variant.config_from_dict(data)
    known = set(variant.Config.field_names())
    for name in sorted(set(data) - known):
        if name in SCHEMA2_FIELDS and data[name] != SCHEMA2_FIELDS[name]:
            raise ValueError(
                f"{variant.stem} config: {name}={data[name]!r} does not apply to {variant.stem}"
            )
    return variant.config_from_dict(
        {k: v for k, v in data.items() if k in known or k not in SCHEMA2_FIELDS}
    )
