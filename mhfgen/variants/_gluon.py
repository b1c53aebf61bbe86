"""What the Gluon variants share beyond mhfgen.kernels.sm90 (the SM's limits, the
descriptors' row view, the backward launch, compiling for sm90 without a GPU): their
configs' base (GluonConfig) and registry entries' base (GluonVariant, answering from the
module's functions named in a GluonModel), the checks every Gluon launcher makes before
it compiles, the token splits of the dK/dU/dV kernels, and the launch path of the
backward variants: `GluonBackward`, a typed record of the four things that path asks of a
variant (its checks, launch and sm90 compile), `GluonDkv`, the whole launcher of the
two dK/dU/dV variants, and `GluonOnePass`, that of the two one-pass ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch

from .. import codegen
from ..kernels.buffers import contiguous_strides, weights_need_copy
from ..kernels.bwd_chunks import Chunk, ChunkPlan, head_chunks, plan_fields, run_chunks
from ..kernels.configs import checked_call, resolve_config
from ..kernels.grad_plans import DkvPlan, run_dkv_plan
from ..kernels.launch import DirectLaunch
from ..kernels.plans import CachedLaunch
from ..kernels.sm90 import (
    BACKWARD_BLOCK_N,
    BACKWARD_DTYPES,
    SM90_REGISTERS,
    SM90_SHARED_MEMORY,
    BackwardLaunch,
    CompileReport,
    backward_descriptors,
    backward_options,
    backward_resource_problems,
    compile_gluon,
    nvmma_block,
)
from ..registry import Variant, VariantConfig
from ..spec import KernelSpec
from ..tiling import cdiv, even_tiles, split_programs_budget
from ..validation import Problem
from ..workspace import kv_heads_per_launch, launch_problems

#: registers per thread setmaxnreg can give a partition: multiples of 8 from 24 to 256
PARTITION_REGS = range(24, 257, 8)
#: the sigmoid forms of the Gluon templates
SIGMOIDS = ("tanh", "exp")


class GluonConfig(VariantConfig):
    """Base of the Gluon variants' configs: no fields of its own (each config declares
    its fields in its own order and `choices` for those its type does not check, all
    checked in that order: VariantConfig.check_typed), the describe() piece they share.
    The fields several of them have mean:

    sigmoid:       'tanh' (one tanh.approx per element) or 'exp' (exp2 + fast divide).
    token_splits:  programs per weight tile, each a share of the token blocks; their
                   partial sums meet by fp32 atomics (never in deterministic runs).
    consumer_regs, producer_regs: registers per thread of the second consumer warpgroup
                   and of the producer (setmaxnreg); the first consumer gets what is left.
                   (`worker_regs` names the worker's field where it is another one.)
    """

    #: the field of the registers a worker partition takes (setmaxnreg) beside the producer
    worker_regs: ClassVar[str] = "consumer_regs"

    choices = dict(
        sigmoid=SIGMOIDS,
        consumer_regs=PARTITION_REGS,
        producer_regs=PARTITION_REGS,
        grads_regs=PARTITION_REGS,
    )

    def __post_init__(self) -> None:
        self.check_typed(*self.field_names())

    def register_constexprs(self) -> dict:
        """The kernel's last constexprs, its register split: the worker's registers
        (CONSUMER_REGS, or as `worker_regs` names them) and PRODUCER_REGS."""
        worker = self.worker_regs
        return {worker.upper(): getattr(self, worker), "PRODUCER_REGS": self.producer_regs}

    def describe_sigmoid(self) -> str:
        """' {sigmoid}' away from the default 'tanh', else ''."""
        return f" {self.sigmoid}" if self.sigmoid != "tanh" else ""


class ForwardConsumersConfig(GluonConfig):
    """Base of the warp-specialised forwards' configs (flash_mhf_fwd_ws,
    flash_mhf_fwd_fp8_ws): `consumers` partitions of `consumer_warps` warps each share the
    weight tiles a one-warp producer loads; `group_heads` of them take heads of one kv
    group, the others further token blocks; `pingpong` makes two consumers take turns
    issuing their GEMMs; `unroll_tiles` 2 takes two weight tiles per loop iteration. The
    fields are each config's own; the checks, geometry and describe() built on them are
    shared here."""

    #: (field, word) of the boolean fields describe() names where they are set, in order
    describe_flags: ClassVar[tuple[tuple[str, str], ...]] = (
        ("pingpong", "pingpong"),
        ("joint_scores", "joint"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.consumers % self.group_heads:
            raise ValueError(
                f"{name}.group_heads={self.group_heads} must divide consumers={self.consumers}"
            )
        if self.pingpong and self.consumers != 2:
            raise ValueError(f"{name}.pingpong needs consumers=2")

    @property
    def block_m(self) -> int:
        """Rows per consumer: 16 per warp (the wgmma atom is 4 warps x 16 rows)."""
        return 16 * self.consumer_warps

    @property
    def rows_per_program(self) -> int:
        return self.block_m * self.consumers

    def check_for(self, spec: KernelSpec) -> None:
        """The shape-independent check: group_heads divides H / Hkv."""
        if spec.group % self.group_heads:
            raise ValueError(
                f"group_heads={self.group_heads} must divide heads/kv_heads={spec.group}"
            )

    def describe(self) -> str:
        text = (
            f"BN{self.block_n} s{self.stages} {self.consumers}x{self.consumer_warps}w "
            f"regs {self.producer_regs}/{self.consumer_regs}"
        )
        for flag, short in self.describe_flags:
            if getattr(self, flag):
                text += f" {short}"
        if self.group_heads > 1:
            text += f" gh{self.group_heads}"
        if self.unroll_tiles == 2:
            text += " 2-tile"
        return text + self.describe_sigmoid()


def forward_registers(spec: KernelSpec, config: ForwardConsumersConfig) -> float:
    """fp32 accumulator values per consumer thread of a warp-specialised forward: O
    (BLOCK_M x D), S, G and the next tile's S, G (BLOCK_M x BLOCK_N each), over
    32 * consumer_warps threads."""
    return config.block_m * (spec.head_dim + 4 * config.block_n) / (32 * config.consumer_warps)


def forward_max_registers(config: ForwardConsumersConfig) -> int:
    """A warp-specialised forward's per-thread register cap: the SM's registers over every
    warp of the block (the one-warp producer occupies a warpgroup), rounded down to 8."""
    warps = config.consumers * config.consumer_warps + 4
    return min(255, SM90_REGISTERS // (32 * warps)) // 8 * 8


def forward_constexprs(config: ForwardConsumersConfig) -> dict:
    """A warp-specialised forward kernel's constexprs: BLOCK_M (a consumer's rows) and
    BLOCK_N, the ring's slots, the warps of a consumer and the register split."""
    return dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        STAGES=config.stages,
        CONSUMER_WARPS=config.consumer_warps,
        **config.register_constexprs(),
    )


@dataclass(frozen=True)
class ForwardPlan:
    """What a warp-specialised forward call's signature decides, computed once: the spec
    and checked config, the generated kernel, the grid, the shared-memory layouts of the
    descriptors, the scalar arguments and the launch's constexprs and options (only the
    descriptors themselves, which hold the tensors' addresses, are built per call), and
    the launch over them."""

    spec: KernelSpec
    config: ForwardConsumersConfig
    kernel: object  # the @gluon.jit kernel; None when there are no tokens
    grid: tuple
    layouts: tuple  # the variant's descriptor_layouts(spec, config)
    scalars: tuple  # the arguments after the tensors: r's strides, seqlen, tokens, ...
    meta: dict  # constexprs and launch options
    launch: DirectLaunch | None  # after its first launch, the compiled binary's

    @classmethod
    def without_tokens(cls, spec: KernelSpec, config) -> ForwardPlan:
        """The plan of a call with no tokens: nothing to launch."""
        return cls(spec, config, None, (), (), (), {}, None)

    @classmethod
    def of(cls, spec, config, kernel, grid, layouts, scalars, meta) -> ForwardPlan:
        """The plan that launches `kernel` over `grid` with these scalars and meta."""
        launch = DirectLaunch(kernel, grid, scalars, meta)
        return cls(spec, config, kernel, grid, layouts, scalars, meta, launch)


def forward_launch_options(config: ForwardConsumersConfig) -> dict:
    """A warp-specialised forward's launch options: a consumer's warps (the producer's
    come from warp_specialize) and the register cap."""
    return dict(num_warps=config.consumer_warps, maxnreg=forward_max_registers(config))


def forward_work_tiles(spec: KernelSpec, config: ForwardConsumersConfig, tokens: int) -> int:
    """Programs of a warp-specialised forward's call, one work tile each:
    (H / group_heads) head groups x token blocks of block_m * consumers / group_heads
    tokens."""
    tokens_per_tile = config.block_m * (config.consumers // config.group_heads)
    return -(-tokens // tokens_per_tile) * (spec.heads // config.group_heads)


def forward_resource_problems(
    spec: KernelSpec, config: ForwardConsumersConfig, shared: int
) -> list[str]:
    """What of a warp-specialised forward's config does not fit an SM: joint score MMAs
    wider than a wgmma, `shared` bytes of shared memory past the limit, a register split
    (setmaxnreg: two or three consumers all at consumer_regs, the first taking the same,
    beside the producer's warpgroup at producer_regs) past the SM's registers, and more
    live accumulator values per consumer thread (forward_registers) than leave 40 of its
    registers to the rest, at most 200 (three consumers fit 160 registers each: 120 live
    values; at D = 128 with 32-column tiles, 128 of them, the sm90 compile serialises
    every wgmma)."""
    problems = []
    if config.joint_scores and config.block_n > 128:
        problems.append(
            f"joint_scores needs block_n <= 128 (a wgmma is at most 256 wide); "
            f"block_n is {config.block_n}"
        )
    if shared > SM90_SHARED_MEMORY:
        problems.append(f"needs {shared} bytes of shared memory (> {SM90_SHARED_MEMORY})")
    if config.consumers >= 2:
        threads, n = 32 * config.consumer_warps, config.consumers
        total = threads * n * config.consumer_regs + 128 * config.producer_regs
        if total > SM90_REGISTERS:
            problems.append(
                f"register split {n} x {threads} threads x {config.consumer_regs} + "
                f"128 x {config.producer_regs} needs {total} registers "
                f"(> {SM90_REGISTERS})"
            )
    live, most = forward_registers(spec, config), min(200, config.consumer_regs - 40)
    if live > most:
        problems.append(f"{live:g} accumulator registers per consumer thread (> {most})")
    return problems


class GluonBackwardConfig(GluonConfig):
    """Base of the Gluon backward configs: weight tiles of BACKWARD_BLOCK_N rows unless a
    config says otherwise, and a register split (setmaxnreg) where a worker warpgroup
    (its field `worker_regs`) and the producer take what their fields say and the default
    partition (`default_partition`) what is left."""

    default_partition: ClassVar[str] = "the first consumer"

    @property
    def block_n(self) -> int:
        """Weight rows per program: one warpgroup's wgmma M."""
        return BACKWARD_BLOCK_N

    def resource_problems(self, shared: int, least: int) -> list[str]:
        """What does not fit an SM: `shared` bytes of shared memory, and a register split
        that leaves the default partition fewer than `least` registers a thread
        (sm90.backward_resource_problems)."""
        worker = self.worker_regs
        return backward_resource_problems(
            shared, worker, getattr(self, worker), self.producer_regs, self.default_partition, least
        )

    def describe_regs(self) -> str:
        """'s{stages} regs {producer_regs}/{worker's regs}': the ring and the split."""
        return f"s{self.stages} regs {self.producer_regs}/{getattr(self, self.worker_regs)}"


@dataclass(frozen=True)
class GluonModel:
    """The functions of a Gluon variant's module that its registry entry (GluonVariant)
    answers with.

    unsupported:     (spec, tokens) -> why the variant cannot run it, or None.
    config_problems: (spec, config) -> why the config cannot run the spec (empty: it can).
    shared_memory:   (spec, config) -> bytes of shared memory a program needs.
    registers:       (spec, config) -> fp32 values a thread keeps live.
    default_config:  (spec, tokens, sm_count) -> the heuristic config.
    call_problems:   (spec, config, tokens, sm_count) -> what else rules the config out
                     for a call of `tokens` tokens on `sm_count` SMs (None: nothing).
    """

    unsupported: Callable[[KernelSpec, int | None], str | None]
    config_problems: Callable[[KernelSpec, VariantConfig], list[str]]
    shared_memory: Callable[[KernelSpec, VariantConfig], int]
    registers: Callable[[KernelSpec, VariantConfig], float]
    default_config: Callable[[KernelSpec, int, int], VariantConfig]
    call_problems: Callable[[KernelSpec, VariantConfig, int, int], list[str]] | None = None


class GluonVariant(Variant):
    """The registry entry of a Gluon variant for Hopper: family 'gluon', sm90 targets,
    bf16/fp16 (wgmma accumulates in fp32), its model the functions of its module that
    `model` names. prune_reason joins config_problems and call_problems."""

    family = "gluon"
    targets = ("sm9",)
    dtypes = BACKWARD_DTYPES
    preference = 10  # before the op's Triton-language variant where it supports the call
    model: ClassVar[GluonModel]

    def supports(self, spec: KernelSpec, tokens: int | None) -> str | None:
        return self.model.unsupported(spec, tokens)

    def shared_memory(self, spec: KernelSpec, config) -> int:
        return self.model.shared_memory(spec, config)

    def registers(self, spec: KernelSpec, config) -> float:
        return self.model.registers(spec, config)

    def default_config(self, spec: KernelSpec, tokens: int, sm_count: int) -> VariantConfig:
        return self.model.default_config(spec, tokens, sm_count)

    def prune_reason(self, spec: KernelSpec, config, tokens: int, sm_count: int) -> str | None:
        problems = self.model.config_problems(spec, config)
        if self.model.call_problems is not None:
            problems = [*problems, *self.model.call_problems(spec, config, tokens, sm_count)]
        return "; ".join(problems) if problems else None


class GluonDkvVariant(GluonVariant):
    """The registry entry of a Gluon dK/dU/dV variant (op bwd_dkv)."""

    op = "bwd_dkv"
    flop_factor = 12  # S, A, dP recomputed, then dV, dK, dU
    outputs = ("dk", "du", "dv")
    takes_grad = True


def checked_config(
    stem: str,
    unsupported: Callable[[KernelSpec], str | None],
    config_problems: Callable[[KernelSpec, VariantConfig], list[str]],
    spec: KernelSpec,
    problem: Problem,
    q: torch.Tensor,
    config: VariantConfig | None,
) -> VariantConfig:
    """The config a Gluon launcher of variant `stem` runs `spec` with: ValueError where
    the variant cannot run the spec (`unsupported`), else the given config or the
    dispatcher's (mhfgen.kernels.configs.resolve_config), ValueError where that config
    cannot run it (`config_problems`: shared memory, registers, tiles)."""
    reason = unsupported(spec)
    if reason:
        raise ValueError(f"{stem} cannot run {spec.key()}: {reason}")
    config = resolve_config(stem, spec, problem, q, config)
    problems = config_problems(spec, config)
    if problems:
        raise ValueError(
            f"{stem} config {config.describe()} cannot run {spec.key()}: " + "; ".join(problems)
        )
    return config


def wave_token_splits(programs: int, blocks: int, sm_count: int) -> int:
    """The token splits the Gluon dK/dU/dV heuristics take for `programs` weight tiles,
    `blocks` row blocks of tokens and `sm_count` multiprocessors (one program each):
    fewer than two waves of weight tiles, enough splits for two, at most blocks / 4;
    otherwise none.

    A split that evens out a partial last wave is faster alone (352 tiles on 132 SMs, 2.67
    waves: 3 splits measured 1.05-1.08x on an H200 at 370M, H16 D64 and 1.3B with 4 kv
    heads) but not where the backward runs it: beside dQ/dR on a second stream, whose
    programs already fill that last wave, 3 splits measured 0.97x at H16 D64 (1.236 against
    1.195 ms added to the split backward), and the training step 0.98x at 370M and H16 D64
    (docs/PERFORMANCE.md). The tuner, which times dK/dU/dV beside dQ/dR, keeps
    the choice per shape."""
    if programs < 2 * sm_count:
        return max(1, min(cdiv(2 * sm_count, programs), blocks // 4))
    return 1


def token_split_problems(spec: KernelSpec, config, tokens: int, sm_count: int) -> list[str]:
    """What is wrong with a Gluon dK/dU/dV config's token splits at `tokens` tokens on
    `sm_count` SMs: more splits than row blocks, or more programs than
    tiling.MAX_PROGRAMS_PER_SM a multiprocessor (past that a split only adds atomic traffic)."""
    if config.token_splits == 1:
        return []
    problems = []
    if config.token_splits > spec.group * cdiv(max(1, tokens), config.block_m):
        problems.append(f"token_splits={config.token_splits} exceeds the row blocks")
    programs = spec.kv_heads * spec.intermediate // config.block_n
    budget = split_programs_budget(sm_count)
    if programs * config.token_splits > budget:
        problems.append(f"token_splits={config.token_splits} makes more than {budget} programs")
    return problems


def token_split_plan(tokens: int, config) -> tuple[int, int, bool]:
    """(row blocks per split, splits, atomic) for `tokens` tokens. `atomic` follows the
    config, not the split count: the template adds by atomics whenever the config splits,
    also where the tokens make a single split, and the gradients must then be zeroed fp32
    buffers."""
    token_blocks = cdiv(tokens, config.block_m)
    per_split = cdiv(token_blocks, config.token_splits)
    return per_split, cdiv(token_blocks, per_split), config.token_splits > 1


def grads_dtype(spec: KernelSpec, config) -> torch.dtype:
    """The dtype a Gluon kernel writes dK, dU, dV in: fp32 where the config splits the
    tokens (partial sums meet by atomics), else the spec's."""
    return torch.float32 if config.token_splits > 1 else spec.torch_dtype


@dataclass(frozen=True)
class GluonBackward:
    """A Gluon backward variant as its launch path sees it (mhfgen.kernels.sm90.
    BackwardLaunch): its kernel takes the descriptors of q, dO (rows) and k, u, v
    (weights), r in fp32, its outputs, then fixed scalars and constexprs, and launches
    with 4 warps under the backward register cap (sm90.backward_options).

    stem:            the variant's name stem.
    unsupported:     spec -> why the variant cannot run it, or None.
    config_problems: (spec, config) -> why the config cannot run it (empty: it can).
    smem_layouts:    (spec, config) -> {'rows': (block, layout), 'weights': (block,
                     layout), ...}: the descriptors' shared layouts.
    constexprs:      (spec, config) -> the kernel's constexpr arguments.
    """

    stem: str
    unsupported: Callable[[KernelSpec], str | None]
    config_problems: Callable[[KernelSpec, VariantConfig], list[str]]
    smem_layouts: Callable[[KernelSpec, VariantConfig], dict]
    constexprs: Callable[[KernelSpec, VariantConfig], dict]

    def launcher(self, make_plan, run) -> CachedLaunch:
        """The variant's cached launch (kernels.plans.CachedLaunch) under its stem."""
        return CachedLaunch(self.stem, make_plan, run)

    def checked(self, q, k, u, v, r, do, config) -> tuple[int, KernelSpec, VariantConfig, bool]:
        """(tokens, spec, config, copy_do) of a call: the inputs checked, whether dO needs
        a contiguous copy (grad_plan_inputs), and the config it runs with (checked_config:
        the given one or the dispatcher's, refused where it cannot run the spec)."""
        choose = partial(checked_config, self.stem, self.unsupported, self.config_problems)
        tokens, spec, config, copy_do, _ = checked_call(q, k, u, v, r, do, config, choose)
        return tokens, spec, config, copy_do

    def meta(self, spec: KernelSpec, config) -> dict:
        """The launch's constexprs and options."""
        return {**self.constexprs(spec, config), **backward_options()}

    def model(self, shared_memory, registers, default_config, call_problems=None) -> GluonModel:
        """The variant's GluonModel: its checks and these resource, heuristic and call
        functions."""
        return GluonModel(
            self.unsupported,
            self.config_problems,
            shared_memory,
            registers,
            default_config,
            call_problems,
        )

    def launch(self, kernel, spec: KernelSpec, config, grid: tuple, scalars: tuple):
        """The BackwardLaunch of `kernel` over `grid` with these scalars."""
        layouts = self.smem_layouts(spec, config)
        return BackwardLaunch(kernel, grid, scalars, self.meta(spec, config), layouts)

    def compile_kernel(
        self, spec: KernelSpec, config, rows: int, **outputs: torch.dtype
    ) -> CompileReport:
        """Compile the variant's kernel for sm90 down to cubin on any machine (no GPU):
        the q/dO descriptors over `rows` rows (sm90.backward_descriptors), r in fp32 and
        each output (kernel argument name -> dtype) as small CPU tensors."""
        args = backward_descriptors(spec, self.smem_layouts(spec, config), rows)
        args["R"] = torch.empty(16, dtype=torch.float32)
        args.update({name: torch.empty(16, dtype=dtype) for name, dtype in outputs.items()})
        return compile_gluon(
            codegen.load_kernel(self.stem, spec, config),
            args,
            self.constexprs(spec, config),
            backward_options(),
        )


@dataclass(frozen=True)
class GluonDkv(GluonBackward):
    """A Gluon dK/dU/dV variant: its config has `block_m` (tokens per row tile), `block_n`
    (weight rows per program) and `token_splits`; its kernel's outputs are dK, dU, dV and
    its scalars (r's strides, seqlen, tokens, row blocks per split)."""

    def model(
        self, shared_memory, registers, default_config, call_problems=token_split_problems
    ) -> GluonModel:
        """The variant's GluonModel, by default with its token splits' problems as what
        rules a config out for a call (token_split_problems)."""
        return super().model(shared_memory, registers, default_config, call_problems)

    def launcher(self, make_plan=None, run=run_dkv_plan) -> CachedLaunch:
        """The variant's cached launch: (q, k, u, v, r in fp32, do) -> (dk, du, dv), its
        plans made by make_plan below."""
        return super().launcher(make_plan or self.make_plan, run)

    def make_plan(self, q, k, u, v, r, do, config) -> DkvPlan:
        """The launch plan of one call signature: the inputs and the config checked, the
        kernel loaded, grid and scalars fixed."""
        tokens, spec, config, copy_do = self.checked(q, k, u, v, r, do, config)
        copy = weights_need_copy(k, u, v)
        if tokens == 0:
            return DkvPlan((), False, copy, copy_do)
        per_split, splits, atomic = token_split_plan(tokens, config)
        scalars = (*r.stride(), q.shape[1], tokens, per_split)
        grid = (spec.intermediate // config.block_n, spec.kv_heads, splits)
        kernel = codegen.load_kernel(self.stem, spec, config)
        return DkvPlan((self.launch(kernel, spec, config, grid, scalars),), atomic, copy, copy_do)

    def compile_sm90(self, spec: KernelSpec, config) -> CompileReport:
        """Compile the variant's kernel for sm90 down to cubin on any machine (no GPU)."""
        grads = grads_dtype(spec, config)
        return self.compile_kernel(spec, config, config.block_m, DK=grads, DU=grads, DV=grads)


def one_pass_call_problems(spec: KernelSpec, config, tokens: int, sm_count: int) -> list[str]:
    """What rules a one-pass config out for a call of `tokens` tokens: more kv heads per
    launch than the spec has, or a workspace over its budget (launch_problems)."""
    return launch_problems(spec, config, tokens)


@dataclass(frozen=True)
class GluonOnePass(GluonBackward):
    """A Gluon one-pass backward variant (op bwd): its config has `block_m` (tokens per
    row tile), `block_n` (weight rows per program), `token_splits` and `head_chunk` (kv
    heads per launch); its kernel takes (after r) the dq, dr, dK, dU, dV buffers of one
    launch's kv heads, then r's strides, dq's token and head strides, dr's strides,
    seqlen, tokens, row blocks per split, the launch's first kv head and the first query
    heads of its dq and dr buffers. The launches, workspaces and their budget:
    mhfgen.kernels.bwd_chunks, mhfgen.workspace."""

    def model(self, shared_memory, registers, default_config, call_problems=None) -> GluonModel:
        """The variant's GluonModel, by default with its launches' problems (head_chunk
        and the workspace budget: mhfgen.workspace.launch_problems) as what rules a
        config out for a call."""
        return super().model(
            shared_memory, registers, default_config, call_problems or one_pass_call_problems
        )

    def launcher(self, make_plan=None, run=run_chunks) -> CachedLaunch:
        """The variant's cached launch: (q, k, u, v, r in fp32, do) -> (dq, dr, dk, du,
        dv), its plans made by make_plan below."""
        return super().launcher(make_plan or self.make_plan, run)

    def make_plan(self, q, k, u, v, r, do, config) -> ChunkPlan:
        """Check the inputs and the config, load the kernel: everything but the launches
        (one per chunk of head_chunk kv heads)."""
        tokens, spec, config, copy_do = self.checked(q, k, u, v, r, do, config)
        fields = plan_fields(spec, config, q, k, u, v, r, copy_do)
        if tokens == 0:
            return ChunkPlan(chunks=(), **fields)
        B, L, H, D = q.shape
        kernel = codegen.load_kernel(self.stem, spec, config)
        width = kv_heads_per_launch(spec, config) * spec.group
        per_split, splits, _ = token_split_plan(tokens, config)
        dr_workspace = fields["dr_mode"] == "workspace"
        dr_strides = contiguous_strides((B, L, width if dr_workspace else H, r.shape[-1]))
        meta, layouts = self.meta(spec, config), self.smem_layouts(spec, config)
        chunks = []
        for kv0, n, h0, h1 in head_chunks(spec, config):
            scalars = (
                *r.stride(),
                width * D,
                D,
                *dr_strides,
                L,
                tokens,
                per_split,
                kv0,
                h0,
                h0 if dr_workspace else 0,
            )
            grid = (spec.intermediate // config.block_n, n, splits)
            launch = BackwardLaunch(kernel, grid, scalars, meta, layouts)
            chunks.append(Chunk(kv0, n, h0, h1, launch))
        return ChunkPlan(chunks=tuple(chunks), **fields)

    def compile_sm90(self, spec: KernelSpec, config) -> CompileReport:
        """Compile the variant's kernel for sm90 down to cubin on any machine (no GPU)."""
        f32, grads = torch.float32, grads_dtype(spec, config)
        rows = max(config.block_m, 16)
        return self.compile_kernel(spec, config, rows, DQ=f32, DR=f32, DK=grads, DU=grads, DV=grads)


#: tokens per row tile of the Gluon backward kernels whose consumer warpgroups own weight
#: rows end to end (flash_mhf_bwd_dkvt_ws, flash_mhf_bwdt_ws): the M of their score wgmma
ROW_OWNER_TILE = 64
#: head_dim columns per chunk of those kernels: the M of an accumulating wgmma
ROW_OWNER_CHUNK = 64


def row_owner_layouts(spec: KernelSpec, config) -> dict:
    """The shared layouts of a row-owning backward kernel (its config has `wg_rows`): of
    the descriptors (q/dO blocks of 64 tokens x 64 head_dim columns; K/U/V blocks of
    wg_rows rows x 64) and of each consumer's exchange tiles (P_LAYOUT: (64 tokens,
    wg_rows); EX_LAYOUT: [dS | dA], (64 tokens, 2 wg_rows))."""
    rows = config.wg_rows
    return {
        "rows": nvmma_block(spec, ROW_OWNER_TILE, ROW_OWNER_CHUNK),
        "weights": nvmma_block(spec, rows, ROW_OWNER_CHUNK),
        "P_LAYOUT": nvmma_block(spec, ROW_OWNER_TILE, rows)[1],
        "EX_LAYOUT": nvmma_block(spec, ROW_OWNER_TILE, 2 * rows)[1],
    }


def row_owner_constexprs(spec: KernelSpec, config) -> dict:
    """A row-owning backward kernel's constexprs: rows per warpgroup, ring slots, its
    exchange tiles' layouts and its register split."""
    layouts = row_owner_layouts(spec, config)
    return dict(
        W_ROWS=config.wg_rows,
        STAGES=config.stages,
        P_LAYOUT=layouts["P_LAYOUT"],
        EX_LAYOUT=layouts["EX_LAYOUT"],
        **config.register_constexprs(),
    )


def row_owner_problems(spec: KernelSpec, config, shared: int, registers: int) -> list[str]:
    """What of a row-owning kernel's config does not fit the spec or an SM: `shared` bytes
    of shared memory, a register split that leaves its first consumer fewer than
    `registers` a thread, and weight tiles (2 wg_rows rows) that cross an expert."""
    problems = config.resource_problems(shared, registers)
    if not even_tiles(spec, config.block_n):
        problems.append(
            f"wg_rows={config.wg_rows} makes {config.block_n}-row weight tiles; "
            f"expert_dim {spec.expert_dim} is not a multiple"
        )
    return problems
