"""flash_mhf_bwd_ws: the warp-specialised Gluon one-pass backward for Hopper
(templates/flash_mhf_bwd_ws.py.jinja; launcher, config type and resource model in
mhfgen.kernels.flash_mhf_bwd_ws).

Two consumer warpgroups split the 8 MMAs of each row tile 4 + 4 (A: S^T, A^T, dK, dU and
the element-wise math; B: dP^T, dV, dq) and swap dP^T and P^T/dS^T/dA^T through shared
memory; a one-warp producer loads q and dO by TMA. sm90, bf16/fp16, D = 64 or 128,
expert_dim a multiple of 64. The dq workspace and its budget: mhfgen.workspace.
"""

from __future__ import annotations

from ..kernels import flash_mhf_bwd_ws as ws
from ..registry import Variant, register
from ..spec import KernelSpec
from ..workspace import workspace_budget, workspace_bytes


class FlashMhfBwdWs(Variant):
    stem = "flash_mhf_bwd_ws"
    op = "bwd"
    family = "gluon"
    Config = ws.BwdWsConfig
    targets = ("sm9",)
    dtypes = ws.DTYPES
    launcher = "mhfgen.kernels.flash_mhf_bwd_ws:flash_mhf_bwd_ws"
    preference = 10  # before flash_mhf_bwd_fused where it supports the call
    flop_factor = 16
    outputs = ("dq", "dr", "dk", "du", "dv")
    takes_grad = True

    def supports(self, spec: KernelSpec, tokens: int) -> str | None:
        return ws.unsupported(spec, tokens)

    def static_params(self, spec: KernelSpec, config: ws.BwdWsConfig) -> dict:
        return ws.static_params(spec, config)

    def shared_memory(self, spec: KernelSpec, config: ws.BwdWsConfig) -> int:
        return ws.shared_memory(spec, config)

    def registers(self, spec: KernelSpec, config: ws.BwdWsConfig) -> float:
        # warpgroup A: dK, dU (BLOCK_N x D) and S^T, A^T, dP^T (BLOCK_N x BLOCK_M)
        return (2 * ws.BLOCK_N * spec.head_dim + 3 * ws.BLOCK_N * config.block_m) / 128

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> ws.BwdWsConfig:
        return ws.default_config(spec, tokens, sm_count)

    def prune_reason(
        self, spec: KernelSpec, config: ws.BwdWsConfig, tokens: int, sm_count: int
    ) -> str | None:
        problems = ws.config_problems(spec, config)
        if config.head_chunk > spec.kv_heads:
            problems.append(f"head_chunk={config.head_chunk} exceeds the kv heads")
        used, budget = (
            workspace_bytes(spec, config, max(1, tokens)),
            workspace_budget(spec, max(1, tokens)),
        )
        if used > budget:
            problems.append(
                f"a {used >> 20} MiB workspace exceeds the budget of {budget >> 20} MiB"
            )
        return "; ".join(problems) if problems else None


register(FlashMhfBwdWs())
