"""flash_mhf_bwd_dkv_ws: the warp-specialised Gluon dK/dU/dV backward for Hopper
(templates/flash_mhf_bwd_dkv_ws.py.jinja; launcher, config type and resource model in
mhfgen.kernels.flash_mhf_bwd_dkv_ws).

Two consumer warpgroups share a row tile: each computes the scores of 64 of a 128-token
tile's tokens (split 'tokens') or of 32 of the weight tile's 64 rows for a 64-token tile
(split 'rows'), the two exchange P, dS, dA through shared memory, and each accumulates
half of head_dim's columns of dK, dU and dV over the tile's tokens; a one-warp producer
loads q and dO by TMA. sm90, bf16/fp16, D = 64 or 128, expert_dim a multiple of 64. Without token
splits it adds nothing by atomics: its gradients are bitwise reproducible.
"""

from __future__ import annotations

from ..kernels import flash_mhf_bwd_dkv_ws as ws
from ..kernels.flash_mhf_bwd_dkv_ws import token_split_problems
from ..registry import Variant, register
from ..spec import KernelSpec


class FlashMhfBwdDkvWs(Variant):
    stem = "flash_mhf_bwd_dkv_ws"
    op = "bwd_dkv"
    family = "gluon"
    Config = ws.BwdDkvWsConfig
    targets = ("sm9",)
    dtypes = ws.DTYPES
    launcher = "mhfgen.kernels.flash_mhf_bwd_dkv_ws:flash_mhf_bwd_dkv_ws"
    preference = 10  # before flash_mhf_bwd_dkv where it supports the call
    flop_factor = 12  # S, A, dP recomputed, then dV, dK, dU
    outputs = ("dk", "du", "dv")
    takes_grad = True

    def supports(self, spec: KernelSpec, tokens: int) -> str | None:
        return ws.unsupported(spec, tokens)

    def static_params(self, spec: KernelSpec, config: ws.BwdDkvWsConfig) -> dict:
        return ws.static_params(spec, config)

    def shared_memory(self, spec: KernelSpec, config: ws.BwdDkvWsConfig) -> int:
        return ws.shared_memory(spec, config)

    def registers(self, spec: KernelSpec, config: ws.BwdDkvWsConfig) -> float:
        return ws.consumer_registers(spec, config)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> ws.BwdDkvWsConfig:
        return ws.default_config(spec, tokens, sm_count)

    def prune_reason(
        self, spec: KernelSpec, config: ws.BwdDkvWsConfig, tokens: int, sm_count: int
    ) -> str | None:
        problems = [
            *ws.config_problems(spec, config),
            *token_split_problems(spec, config, tokens, sm_count),
        ]
        return "; ".join(problems) if problems else None


register(FlashMhfBwdDkvWs())
