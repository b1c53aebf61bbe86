"""Helpers of the tuning tests: recorded-timing documents for ReplayTimer built from a
synthetic cost function over every valid config, so search, database, export/import and
dispatch are tested without a GPU."""

from __future__ import annotations

import hashlib
import math
import sqlite3

from mhfgen import registry
from mhfgen.spec import KernelSpec
from mhfgen.tuning.problem import DeviceFacts, TuningProblem
from mhfgen.tuning.search import SearchSettings, Tuner
from mhfgen.tuning.timer import TIMINGS_FORMAT


def run_sql(path, *statements) -> None:
    """Run SQL statements (a string, or (sql, parameters)) on a database file outside
    mhfgen, and commit: how the tests damage, downgrade or forge tuning databases."""
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(*((statement,) if isinstance(statement, str) else statement))
        conn.commit()
    finally:
        conn.close()


H200 = DeviceFacts("sm90", "NVIDIA H200", "9.0", 132)
#: the 370M preset's spec on an H200
SPEC_370M = KernelSpec(8, 8, 128, 11, 256, "bfloat16", "sm90")


def jitter(config, kernel: str, amount: float = 0.02) -> float:
    """A deterministic pseudo-random factor in [1 - amount, 1 + amount] per config."""
    digest = hashlib.sha256(f"{kernel}{config.to_json()}".encode()).digest()
    return 1.0 + amount * (2.0 * digest[0] / 255.0 - 1.0)


def synthetic_ms(kernel: str, config) -> float:
    """A smooth landscape with one best region (BM 128, BN 64, 8 warps, 3 stages, TMA)
    and 2% deterministic noise: what a GPU's timings roughly look like. A field the
    variant's config lacks counts at its neutral value."""

    def get(name, neutral):
        return getattr(config, name, neutral)

    cost = (
        1.0
        + 0.30 * abs(math.log2(config.block_m / 128))
        + 0.20 * abs(math.log2(config.block_n / 64))
        + 0.10 * (config.num_warps != 8)
        + 0.06 * abs(config.num_stages - 3)
        + 0.05 * (not get("tma", False))
        + 0.08 * (get("inter_splits", 1) - 1)
        + 0.08 * (get("token_splits", 1) - 1)
        + 0.15 * (config.head_dim_split == "pad")
    )
    return (
        {"flash_mhf_fwd": 0.5, "flash_mhf_bwd_dq": 0.8, "flash_mhf_bwd_dkv": 0.9}[kernel]
        * cost
        * jitter(config, kernel)
    )


def recording(
    problem: TuningProblem,
    device: DeviceFacts = H200,
    kernels=None,
    cost=synthetic_ms,
    failures: dict | None = None,
) -> dict:
    """An mhfgen-timings document covering every valid config and the default of
    `kernels` for `problem`; failures: {(kernel, config): (stage, reason)}, the config a
    variant's config."""
    tuner = Tuner(problem, device, timer=None, db=None, settings=SearchSettings())
    records = []
    for kernel in kernels or ("flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv"):
        configs = tuner.grid(kernel)
        if tuner.default(kernel) not in configs:
            configs.append(tuner.default(kernel))
        for config in configs:
            rec = {"kernel": kernel, "config": config.as_dict()}
            failure = next(
                (
                    f
                    for (k, c), f in (failures or {}).items()
                    if k == kernel and registry.get(k).coerce(c) == config
                ),
                None,
            )
            if failure:
                rec["failure"] = {"stage": failure[0], "reason": failure[1]}
            else:
                rec["ms"] = cost(kernel, config)
                rec["error"] = 1e-3
            records.append(rec)
    return {
        "format": TIMINGS_FORMAT,
        "label": "synthetic test timings",
        "device": device.__dict__.copy(),
        "records": records,
    }
