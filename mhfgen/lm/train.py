"""The training loop: AdamW, linear warm-up then cosine decay, bf16 autocast on the GPU,
gradient clipping, validation every N steps, tokens per second and peak memory; on the
GPU optionally with each step's forward and backward replayed from a CUDA graph
(TrainConfig.cuda_graph, mhfgen.lm.graphed).

`train()` returns a RunResult: one row per step (the curve that goes to CSV) and a summary.
Losses are gathered on the device and read back once per `log_every` steps, so logging
costs one synchronisation per interval rather than one per step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .data import BatchSampler, ByteCorpus
from .graphed import GraphedStep
from .model import CausalLM, ModelConfig, count_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains. seed: model initialisation; data_seed: train batches (the
    validation set is drawn with data_seed + 1). max_seconds: a wall-clock guard; a run that
    reaches it stops early and says so (RunResult.summary['stopped_early']). stop_after: run
    only the first stop_after steps of the `steps`-long schedule (to match another run that
    stopped early, at the same learning rates). serve_fp8: once trained, convert the model's
    FlashMHF layers to FP8 expert weights (mhfgen.quantize_fp8_model) and measure the
    validation loss again on the same batches (summary keys fp8_val_loss and
    fp8_val_loss_change, the relative change against final_val_loss). cuda_graph: capture
    the forward and backward of the first step as a CUDA graph and replay it every step
    (mhfgen.lm.graphed.GraphedStep; CUDA only, ignored elsewhere)."""

    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 512
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 16
    log_every: int = 10
    seed: int = 0
    data_seed: int = 1234
    device: str = "cuda"
    bf16: bool = True  # autocast to bf16 (CUDA only; CPU runs stay fp32)
    timing_skip_steps: int = 10  # steps left out of tokens/s (kernel compilation, warm-up)
    max_seconds: float | None = None
    stop_after: int | None = None
    serve_fp8: bool = False  # after training: validation loss again with FP8 expert weights
    cuda_graph: bool = False  # forward + backward replayed from a CUDA graph (CUDA only)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


@dataclass
class RunResult:
    """What a run leaves: rows (one dict per step, see CURVE_FIELDS) and a summary."""

    name: str
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


# One row per optimizer step; val_loss only on validation steps (step 0: before training);
# elapsed_s is wall time since the start, taken when the row's loss was read back.
CURVE_FIELDS = ("step", "tokens", "lr", "train_loss", "val_loss", "grad_norm", "elapsed_s")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up over warmup_steps to
    cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and weight tensors, none on norms (any parameter
    with 'norm' in its name, FlashMHF's q_norm included) or 1-d parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def _autocast(device: torch.device, cfg: TrainConfig):
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"
    )


@torch.no_grad()
def evaluate(
    model: CausalLM, batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig
) -> float:
    """Mean loss over `batches` (the model is put back in training mode afterwards)."""
    device = next(model.parameters()).device
    model.eval()
    total = torch.zeros((), device=device)
    with _autocast(device, cfg):
        for x, y in batches:
            total += model(x, y)[1]
    model.train()
    return total.item() / len(batches)


def train_step(
    model: CausalLM,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
    cfg: TrainConfig,
    graphed: GraphedStep | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at the scheduled learning rate; returns (loss, grad norm before
    clipping) as device tensors, unsynchronised. With `graphed` (made for this model) the
    forward and backward are its CUDA graph's replay, and the gradients stay in place for
    the next replay to overwrite."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if graphed is not None:
        loss = graphed(x, y).detach().clone()  # the graph's loss is overwritten next step
    else:
        with _autocast(x.device, cfg):
            _, loss = model(x, y)
        loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    if graphed is None:
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach()


def graphed_step(model: CausalLM, cfg: TrainConfig, device: torch.device) -> GraphedStep | None:
    """The GraphedStep train_step takes for `model`, where cfg.cuda_graph asks for one and
    the run is on a CUDA device; else None (eager steps)."""
    if not (cfg.cuda_graph and device.type == "cuda"):
        return None
    return GraphedStep(model, torch.bfloat16 if cfg.bf16 else None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    name: str, model_cfg: ModelConfig, cfg: TrainConfig, corpus: ByteCorpus, progress: bool = True
) -> RunResult:
    """Build the model (seeded), train it on `corpus` and return its curve and summary.

    Summary keys: name, ffn, backend, params (total/ffn/other), steps_done, tokens,
    final_val_loss, best_val_loss, tokens_per_s (training steps after timing_skip_steps,
    validation time left out), peak_mem_mib (CUDA only, else None), train_seconds,
    stopped_early, with cfg.serve_fp8 fp8_val_loss and fp8_val_loss_change (serve_fp8),
    then model and train (the configs) and environment (device, versions, day).
    A non-finite loss raises FloatingPointError naming the step.
    """
    if cfg.serve_fp8 and model_cfg.ffn != "flashmhf":
        raise ValueError(f"serve_fp8 needs a FlashMHF model, got ffn={model_cfg.ffn!r}")
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = CausalLM(model_cfg).to(device)
    params = count_parameters(model)
    optimizer = make_optimizer(model, cfg)
    graphed = graphed_step(model, cfg, device)
    sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.seq_len, cfg.data_seed, device)
    val_batches = BatchSampler(
        corpus.val, cfg.batch_size, cfg.seq_len, cfg.data_seed + 1, device
    ).batches(cfg.eval_batches)
    log.info(
        "%s: %s parameters (ffn %s), %s",
        name,
        f"{params['total']:,}",
        f"{params['ffn']:,}",
        model_cfg,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    result = RunResult(name)
    val_losses = {0: evaluate(model, val_batches, cfg)}
    result.rows.append(
        {
            "step": 0,
            "tokens": 0,
            "lr": 0.0,
            "train_loss": None,
            "val_loss": val_losses[0],
            "grad_norm": None,
            "elapsed_s": 0.0,
        }
    )
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    eval_seconds = 0.0  # validation time after the timing start
    timed_from: tuple[float, int] | None = None  # (time, step) where timing started
    start = time.perf_counter()
    stopped_early = False
    final_step = min(cfg.steps, cfg.stop_after or cfg.steps)
    bar = tqdm(total=final_step, desc=name, disable=not progress, dynamic_ncols=True)
    step = 0
    for step in range(1, final_step + 1):
        x, y = sampler.next()
        loss, grad_norm = train_step(model, optimizer, x, y, step - 1, cfg, graphed)
        pending.append((step, loss, grad_norm))
        if step == max(1, cfg.timing_skip_steps) or (timed_from is None and step == final_step):
            _sync(device)
            timed_from = (time.perf_counter(), step)
        last = step == final_step
        if step % cfg.eval_every == 0 or last:
            _sync(device)  # training work still queued must not count as validation time
            t0 = time.perf_counter()
            val_losses[step] = evaluate(model, val_batches, cfg)
            if timed_from is not None and step >= timed_from[1]:
                eval_seconds += time.perf_counter() - t0
            log.info(
                "%s: step %d/%d val_loss %.4f (%.0f s)",
                name,
                step,
                final_step,
                val_losses[step],
                time.perf_counter() - start,
            )
        if step % cfg.log_every == 0 or last or step in val_losses:
            elapsed = _flush(result, pending, val_losses, cfg, start, device)
            bar.update(step - bar.n)
            bar.set_postfix(
                loss=f"{result.rows[-1]['train_loss']:.3f}",
                val=f"{val_losses[max(val_losses)]:.3f}",
            )
            if cfg.max_seconds is not None and elapsed > cfg.max_seconds and not last:
                log.warning(
                    "%s: stopped at step %d of %d (max_seconds=%s)",
                    name,
                    step,
                    final_step,
                    cfg.max_seconds,
                )
                _sync(device)
                t0 = time.perf_counter()
                val_losses[step] = evaluate(model, val_batches, cfg)
                eval_seconds += time.perf_counter() - t0 if timed_from else 0.0
                result.rows[-1]["val_loss"] = val_losses[step]
                stopped_early = True
                break
    bar.close()
    _sync(device)
    end = time.perf_counter()
    served = (
        serve_fp8(model, val_batches, cfg, val_losses[max(val_losses)]) if cfg.serve_fp8 else {}
    )
    timed_tokens = (step - timed_from[1]) * cfg.tokens_per_step if timed_from else 0
    timed_seconds = end - timed_from[0] - eval_seconds if timed_from else 0.0
    result.summary = {
        "name": name,
        "ffn": model_cfg.ffn,
        "backend": model_cfg.backend if model_cfg.ffn == "flashmhf" else "-",
        "params": params,
        "steps_done": step,
        "tokens": step * cfg.tokens_per_step,
        "final_val_loss": val_losses[max(val_losses)],
        "best_val_loss": min(val_losses.values()),
        "tokens_per_s": (
            timed_tokens / timed_seconds if timed_tokens and timed_seconds > 0 else None
        ),
        "peak_mem_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "train_seconds": end - start,
        "stopped_early": stopped_early,
        **served,
        "model": model_cfg.to_dict(),
        "train": asdict(cfg),
        "environment": environment(device),
    }
    return result


def environment(device: torch.device) -> dict:
    """What a run's figures depend on besides its configs: the device (the GPU's name on
    CUDA), the torch and Triton versions and the UTC day."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # the PyTorch backend trains without Triton
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def serve_fp8(
    model: CausalLM,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    trained_loss: float,
) -> dict:
    """Convert `model`'s FlashMHF layers to FP8 expert weights in place and evaluate it on
    `batches` again: {"fp8_val_loss", "fp8_val_loss_change"}, the change being
    (fp8_val_loss - trained_loss) / trained_loss. Raises ValueError for a model without
    FlashMHF layers (a SwiGLU run has nothing to quantise)."""
    from ..layers import quantize_fp8_model

    if quantize_fp8_model(model) == 0:
        raise ValueError("serve_fp8: the model has no FlashMHF layer to quantise")
    loss = evaluate(model, batches, cfg)
    return {"fp8_val_loss": loss, "fp8_val_loss_change": (loss - trained_loss) / trained_loss}


def _flush(
    result: RunResult,
    pending: list,
    val_losses: dict[int, float],
    cfg: TrainConfig,
    start: float,
    device: torch.device,
) -> float:
    """Read the pending losses back (one sync), append their rows, return elapsed seconds."""
    losses = torch.stack([p[1] for p in pending]).float().tolist()
    norms = torch.stack([p[2] for p in pending]).float().tolist()
    elapsed = time.perf_counter() - start
    for (step, _, _), loss, norm in zip(pending, losses, norms):
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {step}")
        result.rows.append(
            {
                "step": step,
                "tokens": step * cfg.tokens_per_step,
                "lr": lr_at(step - 1, cfg),
                "train_loss": loss,
                "val_loss": val_losses.get(step),
                "grad_norm": norm,
                "elapsed_s": elapsed,
            }
        )
    pending.clear()
    return elapsed
