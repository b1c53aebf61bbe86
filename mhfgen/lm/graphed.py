"""A training step's forward and backward replayed from a CUDA graph.

A small model's eager step is bound by the host: the GPU finishes each kernel before
Python has enqueued the next (docs/TRAINING.md). Captured once, the forward, the loss and
the backward of every later step are one graph launch, and the step costs what its
kernels cost on the GPU. The optimizer step and the gradient clipping stay eager (their
learning rate changes per step; they are a few fused launches).

How it stays the eager step: the batch is copied into static input tensors before each
replay; the gradients were None when the graph was captured, so the captured backward
wrote them into buffers of the graph's memory pool, and every replay overwrites those
buffers with the new step's gradients (the parameters' .grad must therefore not be reset
between steps: the optimizer reads them there). Autocast runs without its cast cache, as
CUDA graphs need (a cached cast made during capture would be stale in the next step).
The loss a replay returns lives in the graph's pool: take a copy before the next replay.
"""

from __future__ import annotations

import torch

#: eager forward and backward passes before capture: every kernel compiled, every dispatch
#: choice made, and the caching allocator warmed, on a side stream (the capture recipe)
WARMUP_STEPS = 3


class GraphedStep:
    """forward + loss + backward of `model` on (B, L) token batches of one shape, captured
    as a CUDA graph on the first call and replayed on every call after: `loss = step(x, y)`
    leaves the gradients in the parameters' .grad and returns the loss (a tensor of the
    graph's pool, overwritten by the next call)."""

    def __init__(self, model: torch.nn.Module, autocast_dtype: torch.dtype | None) -> None:
        self.model, self.dtype = model, autocast_dtype
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x = self.y = self.loss = None

    def _forward_backward(self) -> torch.Tensor:
        with torch.autocast(
            "cuda", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None,
            cache_enabled=False,
        ):  # fmt: skip
            _, loss = self.model(self.x, self.y)
        loss.backward()
        return loss

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.clone(), y.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.model.zero_grad(set_to_none=True)
                self._forward_backward()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.model.zero_grad(set_to_none=True)  # the captured backward allocates the grads
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss = self._forward_backward()
        self.graph = graph

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            self._capture(x, y)
        elif x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(
                f"a graphed step replays batches of shape {tuple(self.x.shape)}, "
                f"got {tuple(x.shape)}"
            )
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss
