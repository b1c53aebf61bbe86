"""flash_mhf_fwd_ws: the warp-specialised Gluon forward for Hopper
(templates/flash_mhf_fwd_ws.py.jinja; launcher, config type and resource model in
mhfgen.kernels.flash_mhf_fwd_ws).

A one-warp TMA producer feeds a K/U/V ring; one or two consumer warpgroups issue async
wgmma. sm90 only, bf16/fp16, head_dim a multiple of 16 up to 128; calls of fewer than
MIN_TOKENS tokens are left to flash_mhf_fwd (its split-intermediate decode path). Where
it supports a call it is the op's preferred variant: the dispatcher's heuristic fallback
picks it before flash_mhf_fwd (tuned winners of either still come first).

Its config's fields: see WsConfig. Resources (mhfgen.kernels.flash_mhf_fwd_ws):
shared memory = consumers' Q tiles + stages * 3 K/U/V tiles + mbarriers + 1 KiB;
registers = BLOCK_M * (D + 4 * BLOCK_N) / (32 * consumer_warps) accumulator values per
consumer thread (O, S, G and the next tile's S, G).
"""

from __future__ import annotations

from ..kernels import flash_mhf_fwd_ws as ws
from ..registry import Variant, register
from ..spec import KernelSpec


class FlashMhfFwdWs(Variant):
    stem = "flash_mhf_fwd_ws"
    op = "fwd"
    family = "gluon"
    Config = ws.WsConfig
    targets = ("sm9",)
    dtypes = ws.DTYPES
    launcher = "mhfgen.kernels.flash_mhf_fwd_ws:flash_mhf_fwd_ws"
    preference = 10  # before flash_mhf_fwd (50) where it supports the call
    flop_factor = 6
    outputs = ("o",)

    def supports(self, spec: KernelSpec, tokens: int) -> str | None:
        return ws.unsupported(spec, tokens)

    def static_params(self, spec: KernelSpec, config: ws.WsConfig) -> dict:
        return ws.static_params(spec, config)

    def shared_memory(self, spec: KernelSpec, config: ws.WsConfig) -> int:
        return ws.shared_memory(spec, config)

    def registers(self, spec: KernelSpec, config: ws.WsConfig) -> float:
        return config.block_m * (spec.head_dim + 4 * config.block_n) / (32 * config.consumer_warps)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> ws.WsConfig:
        return ws.default_config(spec, tokens)

    def prune_reason(
        self, spec: KernelSpec, config: ws.WsConfig, tokens: int, sm_count: int
    ) -> str | None:
        problems = ws.config_problems(spec, config)
        return "; ".join(problems) if problems else None


register(FlashMhfFwdWs())
