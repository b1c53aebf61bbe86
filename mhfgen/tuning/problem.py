"""What is tuned (a KernelSpec at a token count) and where (the device's facts)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .. import device as _device
from .. import registry
from ..config_fields import token_count
from ..spec import KernelSpec
from .buckets import shape_bucket

#: the model FLOPs of forward + backward, in units of tokens * H * I * D (3x the forward)
MODEL_FWD_BWD_FACTOR = 18


@dataclass(frozen=True)
class TuningProblem:
    """One problem to tune: the spec and the token count T = B * L of the calls.

    Not a KernelSpec: the token count is not baked into generated code (one kernel
    serves every T), so it belongs to the tuned problem and the database key, not to
    the spec."""

    spec: KernelSpec
    tokens: int

    def __post_init__(self) -> None:
        token_count(self.tokens, "TuningProblem.tokens")

    @property
    def bucket(self) -> int:
        return shape_bucket(self.tokens)

    def flops(self, kernel: str) -> int:
        """Dot FLOPs variant `kernel` executes: its flop_factor * N, N = T * H * I * D
        (forward 6N: S, A, then P V; dQ/dR 10N: S, A, dP recomputed, dQ from dS and dA;
        dK/dU/dV 12N: S^T, A^T, dP^T recomputed, then dV, dK, dU)."""
        s = self.spec
        factor = registry.get(kernel).flop_factor
        return factor * self.tokens * s.heads * s.intermediate * s.head_dim

    def model_flops_fwd_bwd(self) -> int:
        """18 N: forward + backward FLOPs as docs/CONTRACTS.md counts them (3x the forward)."""
        s = self.spec
        return MODEL_FWD_BWD_FACTOR * self.tokens * s.heads * s.intermediate * s.head_dim

    def describe(self) -> str:
        s = self.spec
        return (
            f"H={s.heads} Hkv={s.kv_heads} D={s.head_dim} I={s.intermediate} E={s.experts} "
            f"(De={s.expert_dim}) {s.dtype}, {self.tokens} tokens"
        )


def tflops(flops: int, ms: float) -> float:
    """TFLOP/s of `flops` done in `ms` milliseconds."""
    return flops / (ms * 1e-3) / 1e12 if ms > 0 else 0.0


@dataclass(frozen=True)
class DeviceFacts:
    """The device a tuning runs for: its target ('sm90', 'interpreter'), name as the
    driver reports it, compute capability ('9.0'; 'none' for the CPU) and SM count."""

    target: str
    gpu_name: str
    compute_capability: str
    sm_count: int

    @classmethod
    def of(cls, device: torch.device) -> DeviceFacts:
        return cls(
            _device.target(device),
            _device.gpu_name(device),
            _device.compute_capability(device),
            _device.sm_count(device),
        )

    @property
    def is_gpu(self) -> bool:
        return self.compute_capability != "none"

    def slug(self) -> str:
        """A file-name-safe form of the GPU name ('NVIDIA-H200')."""
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu_name).strip("-") or "device"
