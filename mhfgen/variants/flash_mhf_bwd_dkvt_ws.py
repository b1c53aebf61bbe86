"""flash_mhf_bwd_dkvt_ws: the warp-specialised Gluon dK/dU/dV backward for Hopper whose
consumer warpgroups own weight rows end to end (templates/flash_mhf_bwd_dkvt_ws.py.jinja;
launcher, config type and resource model in mhfgen.kernels.flash_mhf_bwd_dkvt_ws).

Each of two consumer warpgroups owns wg_rows of the program's 2 * wg_rows weight rows:
it computes their scores for a 64-token row tile ([S | A] by one wgmma chain, and dP),
the element-wise math, and accumulates the transposed gradients [dK^T | dU^T] and dV^T
over all of head_dim; the two share only the q/dO ring a one-warp TMA producer fills.
sm90, bf16/fp16, D = 64 or 128, expert_dim a multiple of the weight tile. Without token
splits it adds nothing by atomics: its gradients are bitwise reproducible.
"""

from __future__ import annotations

from ..kernels import flash_mhf_bwd_dkvt_ws as ws
from ..kernels.flash_mhf_bwd_dkv_ws import token_split_problems
from ..registry import Variant, register
from ..spec import KernelSpec


class FlashMhfBwdDkvtWs(Variant):
    stem = "flash_mhf_bwd_dkvt_ws"
    op = "bwd_dkv"
    family = "gluon"
    Config = ws.BwdDkvtWsConfig
    targets = ("sm9",)
    dtypes = ws.DTYPES
    launcher = "mhfgen.kernels.flash_mhf_bwd_dkvt_ws:flash_mhf_bwd_dkvt_ws"
    preference = 20  # after flash_mhf_bwd_dkv_ws, before flash_mhf_bwd_dkv; but see rank
    flop_factor = 12  # S, A, dP recomputed, then dV, dK, dU
    outputs = ("dk", "du", "dv")
    takes_grad = True

    def rank(self, spec: KernelSpec) -> int:
        """First (before flash_mhf_bwd_dkv_ws) at head_dim 64 and with grouped query heads,
        where it measured faster on an H200; after it elsewhere (docs/PERFORMANCE.md)."""
        return 5 if ws.preferred(spec) else self.preference

    def supports(self, spec: KernelSpec, tokens: int) -> str | None:
        return ws.unsupported(spec, tokens)

    def static_params(self, spec: KernelSpec, config: ws.BwdDkvtWsConfig) -> dict:
        return ws.static_params(spec, config)

    def shared_memory(self, spec: KernelSpec, config: ws.BwdDkvtWsConfig) -> int:
        return ws.shared_memory(spec, config)

    def registers(self, spec: KernelSpec, config: ws.BwdDkvtWsConfig) -> float:
        return ws.consumer_registers(spec, config)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> ws.BwdDkvtWsConfig:
        return ws.default_config(spec, tokens, sm_count)

    def prune_reason(
        self, spec: KernelSpec, config: ws.BwdDkvtWsConfig, tokens: int, sm_count: int
    ) -> str | None:
        problems = [
            *ws.config_problems(spec, config),
            *token_split_problems(spec, config, tokens, sm_count),
        ]
        return "; ".join(problems) if problems else None


register(FlashMhfBwdDkvtWs())
