"""flash_mhf_bwd_dq_ws: the warp-specialised Gluon dQ/dR backward for Hopper
(templates/flash_mhf_bwd_dq_ws.py.jinja; launcher, config type and resource model in
mhfgen.kernels.flash_mhf_bwd_dq_ws).

Two consumer warpgroups of 64 rows each walk a kv head's weight tiles, recomputing S, A
and dP and accumulating dq in registers; a one-warp producer loads q and dO once and
K, U, V per tile by TMA. sm90, bf16/fp16, D = 64 or 128, expert_dim a multiple of 64. It
adds nothing by atomics: its gradients are bitwise reproducible.
"""

from __future__ import annotations

from ..kernels import flash_mhf_bwd_dq_ws as ws
from ..registry import Variant, register
from ..spec import KernelSpec


class FlashMhfBwdDqWs(Variant):
    stem = "flash_mhf_bwd_dq_ws"
    op = "bwd_dq"
    family = "gluon"
    Config = ws.BwdDqWsConfig
    targets = ("sm9",)
    dtypes = ws.DTYPES
    launcher = "mhfgen.kernels.flash_mhf_bwd_dq_ws:flash_mhf_bwd_dq_ws"
    preference = 10  # before flash_mhf_bwd_dq where it supports the call
    flop_factor = 10  # S, A, dP recomputed; dQ from dS and dA
    outputs = ("dq", "dr")
    takes_grad = True

    def supports(self, spec: KernelSpec, tokens: int) -> str | None:
        return ws.unsupported(spec, tokens)

    def static_params(self, spec: KernelSpec, config: ws.BwdDqWsConfig) -> dict:
        return ws.static_params(spec, config)

    def shared_memory(self, spec: KernelSpec, config: ws.BwdDqWsConfig) -> int:
        return ws.shared_memory(spec, config)

    def registers(self, spec: KernelSpec, config: ws.BwdDqWsConfig) -> float:
        # a consumer: dq (64 x D) and S, A, dP of (64 x 64)
        return (64 * spec.head_dim + 3 * 64 * ws.BLOCK_N) / 128

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> ws.BwdDqWsConfig:
        return ws.default_config(spec, tokens, sm_count)

    def prune_reason(
        self, spec: KernelSpec, config: ws.BwdDqWsConfig, tokens: int, sm_count: int
    ) -> str | None:
        problems = ws.config_problems(spec, config)
        return "; ".join(problems) if problems else None


register(FlashMhfBwdDqWs())
