"""The warp-specialised Gluon dK/dU/dV backward for Hopper
(templates/flash_mhf_bwd_dkv_ws.py.jinja): its config type, resource model, launcher and
sm90 compile check.

A program owns one 64-row weight tile (within one expert) of one kv head and walks row
tiles of 128 tokens of each query head of the group. Two consumer warpgroups split each
tile: warpgroup w computes S, A, dP of tokens [64 w, 64 w + 64) and the element-wise math,
writes P, dS, dA (bf16) to shared memory, and, once both halves are there, accumulates
head_dim columns [w D / 2, (w + 1) D / 2) of dV += P^T dO, dK += dS^T q, dU += dA^T q over
all 128 tokens. Each warpgroup so holds three (64 x D / 2) fp32 accumulators and three
(64 x 64) score tiles, 192 registers a thread, where one warpgroup holding whole
(64 x D) accumulators would need 288. A one-warp producer loads K, U, V once and q, dO
per tile by TMA into a ring of `stages` slots.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import codegen
from ..config_fields import choice, positive_int
from ..registry import VariantConfig
from ..spec import KernelSpec
from ..tiling import cdiv
from ..validation import check_flash_mhf_inputs
from .buffers import empty, grad_plan_inputs
from .configs import first_launch, resolve_config, spec_of
from .plans import plan_cache, plan_key, remember
from .sm90 import CompileReport, backward_descriptors, compile_gluon, rows_view

KERNEL = "flash_mhf_bwd_dkv_ws"
DTYPES = ("bfloat16", "float16")
HEAD_DIMS = (64, 128)
#: weight-tile rows per program: the M of the accumulating wgmma
BLOCK_N = 64
#: tokens per row tile: 64 per consumer warpgroup
BLOCK_M = 128
SM90_SHARED_MEMORY = 232448
SM90_REGISTERS = 65536
#: programs per multiprocessor above which a token split only adds atomic traffic
MAX_PROGRAMS_PER_SM = 8


@dataclass(frozen=True)
class BwdDkvWsConfig(VariantConfig):
    """Launch parameters of flash_mhf_bwd_dkv_ws.

    stages:        slots of the q/dO ring (each 2 * 128 * D * 2 bytes).
    sigmoid:       'tanh' (one tanh.approx per element) or 'exp' (exp2 + fast divide).
    token_splits:  programs per weight tile, each a share of the token blocks; their
                   partial sums meet by fp32 atomics (never in deterministic runs).
    consumer_regs, producer_regs: registers per thread of the second consumer warpgroup
                   and of the producer (setmaxnreg); the first consumer gets what is left.
    """

    variant = KERNEL

    stages: int = 2
    sigmoid: str = "tanh"
    token_splits: int = 1
    consumer_regs: int = 240
    producer_regs: int = 24

    def __post_init__(self) -> None:
        where = f"{KERNEL} config: "
        choice(self.stages, where + "stages", (2, 3, 4))
        choice(self.sigmoid, where + "sigmoid", ("tanh", "exp"))
        positive_int(self.token_splits, where + "token_splits", 1024)
        choice(self.consumer_regs, where + "consumer_regs", range(24, 257, 8))
        choice(self.producer_regs, where + "producer_regs", range(24, 257, 8))

    @property
    def block_n(self) -> int:
        return BLOCK_N

    @property
    def block_m(self) -> int:
        return BLOCK_M

    def describe(self) -> str:
        text = f"s{self.stages} regs {self.producer_regs}/{self.consumer_regs}"
        if self.token_splits > 1:
            text += f" ts{self.token_splits}"
        return text + (f" {self.sigmoid}" if self.sigmoid != "tanh" else "")


def unsupported(spec: KernelSpec, tokens: int | None = None) -> str | None:
    """Why flash_mhf_bwd_dkv_ws cannot run `spec`, or None."""
    if not spec.target.startswith("sm9"):
        return f"Gluon wgmma kernel for sm90 (Hopper); target is {spec.target}"
    if spec.dtype not in DTYPES:
        return f"bf16/fp16 only; dtype is {spec.dtype}"
    if spec.head_dim not in HEAD_DIMS:
        return f"head_dim 64 or 128 only; it is {spec.head_dim}"
    if spec.expert_dim % BLOCK_N:
        return f"expert_dim must be a multiple of {BLOCK_N}; it is {spec.expert_dim}"
    return None


def shared_memory(spec: KernelSpec, config: BwdDkvWsConfig) -> int:
    """Bytes: the q/dO ring, K/U/V, the exchange tiles (P, dS, dA of 128 tokens, bf16),
    the mbarriers and 1 KiB of compiler scratch."""
    d = spec.head_dim
    ring = config.stages * 2 * BLOCK_M * d * 2
    weights = 3 * BLOCK_N * d * 2
    exchange = 3 * BLOCK_M * BLOCK_N * 2
    return ring + weights + exchange + 8 * (2 * config.stages + 3) + 1024


def max_registers(config: BwdDkvWsConfig) -> int:
    """The launch's per-thread register cap: the SM's registers over 12 warps (two
    consumer warpgroups and the producer's, rounded to a warpgroup), down to a multiple
    of 8."""
    return min(255, SM90_REGISTERS // (32 * 12)) // 8 * 8


def config_problems(spec: KernelSpec, config: BwdDkvWsConfig) -> list[str]:
    problems = []
    if shared_memory(spec, config) > SM90_SHARED_MEMORY:
        problems.append(f"needs {shared_memory(spec, config)} bytes of shared memory")
    if 128 * (config.consumer_regs + config.producer_regs) > SM90_REGISTERS - 128 * 192:
        problems.append(f"consumer_regs + producer_regs = {config.consumer_regs} + "
                        f"{config.producer_regs} leave the first consumer fewer than 192 "
                        "registers")
    return problems


def default_config(spec: KernelSpec, tokens: int, sm_count: int) -> BwdDkvWsConfig:
    """A 2-slot ring (3 at D = 64, where shared memory allows it), tanh, and token splits
    only where the weight tiles fill fewer than two waves of programs."""
    stages = 3 if spec.head_dim <= 64 else 2
    programs = spec.kv_heads * spec.intermediate // BLOCK_N
    blocks = spec.group * cdiv(max(1, tokens), BLOCK_M)
    splits = 1
    if programs < 2 * sm_count:
        splits = max(1, min(cdiv(2 * sm_count, programs), blocks // 4))
    return BwdDkvWsConfig(stages=stages, token_splits=splits)


def static_params(spec: KernelSpec, config: BwdDkvWsConfig) -> dict:
    return {"sigmoid": config.sigmoid, "token_split": config.token_splits > 1}


def load_kernel(spec: KernelSpec, config: BwdDkvWsConfig):
    return codegen.load_kernel(KERNEL, spec, config)


def smem_layouts(spec: KernelSpec) -> dict:
    """The shared layouts: of the descriptors (q/dO blocks of 64 tokens x D / 2, K/U/V
    blocks of 64 rows x D / 2) and of the exchange tiles (EX_LAYOUT: bf16 (64, 64))."""
    from triton.experimental.gluon import language as gl

    dt = {"bfloat16": gl.bfloat16, "float16": gl.float16}[spec.dtype]
    half = spec.head_dim // 2
    rows = BLOCK_M // 2
    return {"rows": ([rows, half], gl.NVMMASharedLayout.get_default_for([rows, half], dt)),
            "weights": ([BLOCK_N, half],
                        gl.NVMMASharedLayout.get_default_for([BLOCK_N, half], dt)),
            "EX_LAYOUT": gl.NVMMASharedLayout.get_default_for([rows, BLOCK_N], dt)}


def constexprs(spec: KernelSpec, config: BwdDkvWsConfig) -> dict:
    return dict(BLOCK_N=BLOCK_N, STAGES=config.stages,
                EX_LAYOUT=smem_layouts(spec)["EX_LAYOUT"], CONSUMER_REGS=config.consumer_regs,
                PRODUCER_REGS=config.producer_regs)


class GluonLaunch:
    """The launch: descriptors built per call over the tensors, the rest fixed."""

    def __init__(self, kernel, grid: tuple, scalars: tuple, meta: dict, layouts: dict) -> None:
        self.kernel, self.grid, self.scalars, self.meta = kernel, grid, scalars, meta
        self.rows_layout, self.weights_layout = layouts["rows"], layouts["weights"]

    def __call__(self, q, k, u, v, r, do, dk, du, dv) -> None:
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        D = q.shape[-1]
        rows = [TensorDescriptor.from_tensor(rows_view(t), *self.rows_layout) for t in (q, do)]
        weights = [TensorDescriptor.from_tensor(w.view(-1, D), *self.weights_layout)
                   for w in (k, u, v)]
        with torch.cuda.device(q.device):
            self.kernel[self.grid](rows[0], rows[1], *weights, r, dk, du, dv, *self.scalars,
                                   **self.meta)


@dataclass(frozen=True)
class DkvWsPlan:
    """What a call's signature decides, computed once (see kernels.plans.signature)."""

    launch: GluonLaunch | None  # None when there are no tokens
    atomic: bool  # token splits: fp32 partials meet by atomics in zeroed buffers
    copy_weights: bool  # k/u/v need a contiguous copy
    copy_do: bool  # dO needs a contiguous copy in q's dtype


_plans = plan_cache()


def flash_mhf_bwd_dkv_ws(q: torch.Tensor, k: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                         r: torch.Tensor, do: torch.Tensor,
                         config: BwdDkvWsConfig | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, du, dv) of FlashMHF for the output gradient `do` (B, L, H, D) through the
    warp-specialised Gluon kernel (sm90); each (Hkv, E, De, D), contiguous, in k's dtype.
    ValueError where the variant does not support the problem."""
    key = plan_key(config, q, k, u, v, r, do)
    plan = _plans.get(key)
    if plan is not None:
        return _run(plan, q, k, u, v, r, do)
    plan, out = first_launch(KERNEL, lambda c: _make_plan(q, k, u, v, r, do, c),
                             lambda p: _run(p, q, k, u, v, r, do), (q, k, u, v, r), config)
    remember(_plans, key, plan)
    return out


def _run(plan: DkvWsPlan, q, k, u, v, r, do):
    """Allocate the gradients and launch."""
    if plan.launch is None:
        return tuple(torch.zeros(k.shape, dtype=k.dtype, device=k.device) for _ in range(3))
    if plan.copy_weights:
        k, u, v = k.contiguous(), u.contiguous(), v.contiguous()
    if plan.copy_do:
        do = do.to(q.dtype).contiguous()
    # three separate buffers: outputs of a custom op may not alias each other
    if plan.atomic:
        grads = [torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(3)]
    else:
        grads = [empty(k.shape, k.dtype, k.device) for _ in range(3)]
    plan.launch(q, k, u, v, r, do, *grads)
    if plan.atomic:
        grads = [g.to(k.dtype) for g in grads]
    return grads[0], grads[1], grads[2]


def _make_plan(q, k, u, v, r, do, config) -> DkvWsPlan:
    """Check the inputs and the config, load the kernel: everything but the launch."""
    problem = check_flash_mhf_inputs(q, k, u, v, r)
    copy_do, _ = grad_plan_inputs(q, do)
    spec = spec_of(problem, q)
    reason = unsupported(spec)
    if reason:
        raise ValueError(f"{KERNEL} cannot run {spec.key()}: {reason}")
    config = resolve_config(KERNEL, spec, problem, q, config)
    problems = config_problems(spec, config)
    if problems:
        raise ValueError(f"{KERNEL} config {config.describe()} cannot run {spec.key()}: "
                         + "; ".join(problems))
    copy = not (k.is_contiguous() and u.is_contiguous() and v.is_contiguous())
    tokens = problem.tokens
    if tokens == 0:
        return DkvWsPlan(None, False, copy, copy_do)
    per_split, splits, atomic = token_split_plan(tokens, config)
    scalars = (*r.stride(), q.shape[1], tokens, per_split)
    meta = {**constexprs(spec, config), "num_warps": 4, "maxnreg": max_registers(config)}
    grid = (spec.intermediate // BLOCK_N, spec.kv_heads, splits)
    launch = GluonLaunch(load_kernel(spec, config), grid, scalars, meta, smem_layouts(spec))
    return DkvWsPlan(launch, atomic, copy, copy_do)


def token_split_plan(tokens: int, config: BwdDkvWsConfig) -> tuple[int, int, bool]:
    """(row blocks per split, splits, atomic) for `tokens` tokens. `atomic` follows the
    config, not the split count: the template adds by atomics whenever the config splits,
    also where the tokens make a single split, and the gradients must then be zeroed fp32
    buffers."""
    token_blocks = cdiv(tokens, BLOCK_M)
    per_split = cdiv(token_blocks, config.token_splits)
    return per_split, cdiv(token_blocks, per_split), config.token_splits > 1


def compile_sm90(spec: KernelSpec, config: BwdDkvWsConfig) -> CompileReport:
    """Compile the generated kernel for sm90 down to cubin on any machine (no GPU)."""
    f32 = torch.empty(16, dtype=torch.float32)
    narrow = torch.empty(16, dtype=spec.torch_dtype)
    grads = f32 if config.token_splits > 1 else narrow
    args = dict(backward_descriptors(spec, smem_layouts(spec), BLOCK_M),
                R=f32, DK=grads, DU=grads, DV=grads)
    return compile_gluon(load_kernel(spec, config), args, constexprs(spec, config),
                         dict(num_warps=4, maxnreg=max_registers(config)))
