"""Parity of distributed FlashMHF training against one process: DDP, FSDP2, heads-TP.

Each check runs inside an initialised process group (torchrun, or mhfgen.parallel.launch),
on every rank, on the device `init_process_group` chose (a GPU with NCCL, else the CPU with
gloo), and returns a ParityResult: relative errors ||x - x_ref||_F / ||x_ref||_F
(mhfgen.tolerances.relative_error) of the distributed run against one process computing
the same thing alone, from the same initial weights and data, on the same device.

* lm_step_parity("ddp" | "fsdp2" | "tp"): `steps` SGD steps of mhfgen.lm's CausalLM. The
  one process takes the whole batch of B sequences. Under DDP and FSDP2 rank t of W takes
  sequences [t B/W, (t+1) B/W), so the gradient averaged over ranks is the one process's
  gradient of the mean loss; under "tp" (every block's FFN sharded by heads with the
  HeadParallel style, the rest replicated) every rank takes the whole batch. Compared at
  every step: the loss (mean over ranks) and every parameter's gradient (shards
  gathered); after the last step, every parameter.
  compiled=True compiles every decoder block (compile_blocks; the one process stays eager).
* tp_layer_parity: one FlashMHF sharded by heads (mhfgen.parallel.parallelize_flashmhf)
  over all ranks against the unsharded layer: y, dx and every parameter's gradient.

Tolerances (PARITY_TOLERANCE) cover summation in another order: the averaged gradients and
the partial sums of the row-parallel out_proj are added in a different order than one
process adds them, and a compiled model fuses differently; in bf16 that is a few units of
the last place of a bf16 number (2^-8 = 3.9e-3).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist
from torch import nn

from ..layers import FlashMHF
from ..lm.model import CausalLM, ModelConfig
from ..tolerances import relative_error

#: dtype name -> bar of every relative error of a parity check
PARITY_TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 1.5e-2}

WRAPPERS = ("ddp", "fsdp2", "tp", "fsdp2+tp")


@dataclass
class ParityResult:
    """One check's errors by quantity ('loss', 'y', 'dx', 'grad:<param>', 'param:<param>');
    check: 'ddp', 'fsdp2', 'tp' (lm_step_parity) or 'tp-layer' (tp_layer_parity)."""

    check: str
    dtype: str
    compiled: bool
    device: str
    world_size: int
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def tolerance(self) -> float:
        return PARITY_TOLERANCE[self.dtype]

    @property
    def worst(self) -> tuple[str, float]:
        """The quantity with the largest error and that error."""
        name = max(self.errors, key=self.errors.get)
        return name, self.errors[name]

    @property
    def ok(self) -> bool:
        return bool(self.errors) and self.worst[1] <= self.tolerance

    def note(self, name: str, value: float) -> None:
        """Keep the largest error seen for `name` (over steps)."""
        self.errors[name] = max(self.errors.get(name, 0.0), value)

    def describe(self) -> str:
        name, value = self.worst
        mode = "compiled" if self.compiled else "eager"
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"{self.check:8s} {mode:8s} {self.dtype:8s} {self.device:6s} "
            f"W={self.world_size} worst {name} {value:.2e} (bar {self.tolerance:.1e}) "
            f"{verdict}"
        )


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered into one plain tensor; any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@dataclass(frozen=True)
class LMCase:
    """What lm_step_parity trains: the model, batch x seq tokens per step (batch divisible by
    the world size), the number of SGD steps and their learning rate."""

    model: ModelConfig
    batch: int = 4
    seq: int = 16
    steps: int = 2
    lr: float = 0.5
    seed: int = 0


def tiny_lm_case(backend: str = "torch", n_layers: int = 2) -> LMCase:
    """A model small enough for CPU processes (and Triton's interpreter)."""
    cfg = ModelConfig(
        d_model=32,
        n_layers=n_layers,
        n_heads=2,
        mhf_heads=2,
        mhf_intermediate=64,
        mhf_experts=2,
        max_seq_len=16,
        backend=backend,
    )
    return LMCase(cfg, batch=4, seq=8)


def compile_blocks(model: CausalLM) -> None:
    """torch.compile(fullgraph=True) on every decoder block, in place (torchtitan's recipe:
    the blocks are the FSDP2 units, so FSDP2's hooks stay outside the compiled graphs; the
    blocks share one graph, parameters being its inputs)."""
    for block in model.blocks:
        block.compile(fullgraph=True)


def wrap_model(model: nn.Module, wrapper: str, device: torch.device) -> nn.Module:
    """`model` under DDP, with FSDP2's fully_shard on every block and on the root, ("tp")
    with every block's FFN sharded by heads over all ranks, or ("fsdp2+tp") both on a
    (world / 2, 2) mesh: FSDP2 over its "dp" dimension, the heads over "tp"."""
    if wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if wrapper == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)
    if wrapper in ("tp", "fsdp2+tp"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import parallelize_module

        from .tensor import HeadParallel

        world = dist.get_world_size()
        if wrapper == "tp":
            mesh = init_device_mesh(device.type, (world,))
            return parallelize_module(model, mesh, {"blocks.*.ffn": HeadParallel()})
        mesh = init_device_mesh(device.type, (world // 2, 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"blocks.*.ffn": HeadParallel()})
        for block in model.blocks:
            fully_shard(block, mesh=mesh["dp"])
        return fully_shard(model, mesh=mesh["dp"])
    raise ValueError(f"wrapper must be one of {WRAPPERS}, got {wrapper!r}")


def lm_step_parity(
    wrapper: str,
    case: LMCase,
    device: torch.device,
    compiled: bool = False,
    dtype: torch.dtype = torch.float32,
) -> ParityResult:
    """`case.steps` training steps of case.model under `wrapper` (one of WRAPPERS) against
    one process (see the module docstring); every rank returns the same errors."""
    if wrapper not in WRAPPERS:
        raise ValueError(f"wrapper must be one of {WRAPPERS}, got {wrapper!r}")
    world, rank = dist.get_world_size(), dist.get_rank()
    if wrapper == "fsdp2+tp" and world % 2:
        raise ValueError(f"fsdp2+tp needs an even world size (TP degree 2), got {world}")
    # the data-parallel ranks split the batch; tensor-parallel ranks (pairs of consecutive
    # ranks under "fsdp2+tp") compute the same sequences with their share of the heads
    dp_rank, dp_size = {"tp": (0, 1), "fsdp2+tp": (rank // 2, world // 2)}.get(
        wrapper, (rank, world)
    )
    if case.batch % dp_size:
        raise ValueError(
            f"batch {case.batch} is not divisible by the {dp_size} data-parallel ranks"
        )
    torch.manual_seed(case.seed)
    reference = CausalLM(case.model).to(device=device, dtype=dtype)
    model = copy.deepcopy(reference)
    if compiled:
        compile_blocks(model)
    model = wrap_model(model, wrapper, device)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=case.lr)
    opt = torch.optim.SGD(model.parameters(), lr=case.lr)
    data = torch.Generator().manual_seed(case.seed + 1)
    lo, hi = dp_rank * case.batch // dp_size, (dp_rank + 1) * case.batch // dp_size
    result = ParityResult(wrapper, str(dtype).removeprefix("torch."), compiled, device.type, world)
    names = [name for name, _ in reference.named_parameters()]
    for _ in range(case.steps):
        tokens = torch.randint(
            0, case.model.vocab_size, (case.batch, case.seq + 1), generator=data
        ).to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        loss_ref = reference(inputs, targets)[1]
        loss_ref.backward()
        loss = model(inputs[lo:hi], targets[lo:hi])[1]
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        result.note("loss", relative_error(mean_loss / world, loss_ref))
        # NOTE: a replicated parameter's gradient under "tp" is each rank's own (equal on
        # every rank: the in_proj input's gradient is all-reduced); compared as it is
        for name, p_ref, p in zip(names, reference.parameters(), model.parameters()):
            result.note(f"grad:{name}", relative_error(_full(p.grad), p_ref.grad))
        for optimizer in (opt_ref, opt):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for name, p_ref, p in zip(names, reference.parameters(), model.parameters()):
        result.note(f"param:{name}", relative_error(_full(p.detach()), p_ref.detach()))
    return result


@dataclass(frozen=True)
class TPCase:
    """The FlashMHF layer tp_layer_parity shards, and its input: batch x seq tokens."""

    d_model: int = 64
    n_heads: int = 4
    intermediate_size: int = 64
    n_experts: int = 2
    n_kv_heads: int = 2
    qk_norm: bool = True
    bias: bool = False
    batch: int = 2
    seq: int = 5
    seed: int = 0

    def layer(self, backend: str, device: torch.device, dtype: torch.dtype) -> FlashMHF:
        """The unsharded layer: the case's fields but batch, seq and seed are FlashMHF's
        arguments of the same names."""
        sizes = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("batch", "seq", "seed"):
            del sizes[name]
        return FlashMHF(**sizes, backend=backend, device=device, dtype=dtype)


def tp_layer_parity(
    case: TPCase, device: torch.device, dtype: torch.dtype = torch.float32, backend: str = "triton"
) -> ParityResult:
    """The layer sharded by heads over every rank (a 1-D mesh of the world) against the
    unsharded layer: the output, the input's gradient and every parameter's gradient."""
    from torch.distributed.device_mesh import init_device_mesh

    from .tensor import parallelize_flashmhf

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    torch.manual_seed(case.seed)
    reference = case.layer(backend, device, dtype)
    sharded = parallelize_flashmhf(copy.deepcopy(reference), mesh)
    data = torch.Generator().manual_seed(case.seed + 1)
    x = torch.randn(case.batch, case.seq, case.d_model, generator=data).to(device, dtype)
    dy = torch.randn(x.shape, generator=data).to(device, dtype)
    x_ref, x_tp = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = reference(x_ref)
    y_ref.backward(dy)
    y = sharded(x_tp)
    y.backward(dy)
    result = ParityResult(
        "tp-layer", str(dtype).removeprefix("torch."), False, device.type, dist.get_world_size()
    )
    result.note("y", relative_error(y, y_ref))
    result.note("dx", relative_error(x_tp.grad, x_ref.grad))
    for (name, p_ref), p in zip(reference.named_parameters(), sharded.parameters()):
        result.note(f"grad:{name}", relative_error(_full(p.grad), p_ref.grad))
    return result
