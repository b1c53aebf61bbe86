"""Output buffers, workspaces and the stride and copy decisions of launchers."""

from __future__ import annotations

import threading

import torch

from ..validation import overruns_int32


def contiguous_strides(shape: tuple) -> tuple:
    """The strides of a contiguous tensor of `shape`."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(1, size)
    return tuple(reversed(strides))


def weights_need_copy(k: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether a launcher must pass contiguous copies of k, u, v (Hkv, E, De, D): the
    kernels read each as Hkv * E * De rows of D elements at stride D."""
    return not (k.is_contiguous() and u.is_contiguous() and v.is_contiguous())


_allocator_set = False


def ensure_descriptor_allocator(device: torch.device) -> None:
    """Tensor descriptors made inside a kernel need global scratch memory: give Triton a
    torch-backed allocator once per process (the interpreter needs none)."""
    global _allocator_set
    if _allocator_set or device.type != "cuda":
        return
    import triton

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device="cuda")

    triton.set_allocator(alloc)
    _allocator_set = True


_poison = False


def set_poison(enabled: bool) -> None:
    """Debugging aid for tests: fill every output buffer the launchers allocate with NaN
    before the kernel runs, so an element the kernel fails to write shows up as NaN."""
    global _poison
    _poison = enabled


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty, or a NaN-filled tensor while poisoning is on (see set_poison)."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def grad_plan_inputs(q: torch.Tensor, do: torch.Tensor) -> tuple[bool, tuple]:
    """For a backward launcher's plan: whether `do` needs a contiguous copy in q's dtype
    (it has another dtype, a non-unit last stride or offsets past the kernels' 32-bit
    head offsets) and the (batch, seq, head) strides the
    kernel will see."""
    if do.shape != q.shape:
        raise ValueError(f"do must have q's shape {tuple(q.shape)}, got {tuple(do.shape)}")
    copy = do.dtype != q.dtype or (do.numel() > 0 and do.stride(-1) != 1) or overruns_int32(do)
    strides = contiguous_strides(tuple(do.shape)) if copy else do.stride()
    return copy, strides[:3]


_counters: dict = {}


class CounterReserve:
    """int32 zeros made once, outside any CUDA graph capture, handed out in disjoint slices
    to the split launches captured later, one slice per captured call.

    A kernel with a split reduction leaves its counters at zero when it ends, so a slice
    zeroed once serves every replay of the one graph node that owns it; no other call
    ever gets it, so graphs replayed at once on two streams never share a counter. Without
    a reserve (none made on this device before the capture) or once it is used up, a
    captured call allocates its counters with torch.zeros, a memset node in the graph
    before every replay (about 2 us a call on an H100)."""

    #: int32 counters of a reserve; a 1.3B decode call takes 8 to 64
    SIZE = 1 << 18
    #: slices start at multiples of this many counters (128-byte aligned)
    ALIGN = 32

    def __init__(self, device: torch.device, size: int = SIZE) -> None:
        self.zeros = torch.zeros(size, dtype=torch.int32, device=device)
        self.next = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> torch.Tensor | None:
        """A fresh slice of n zeros, or None when fewer than n are left."""
        with self._lock:
            start = self.next
            if start + n > self.zeros.numel():
                return None
            self.next = start + -(-n // self.ALIGN) * self.ALIGN
        return self.zeros[start : start + n]


_reserves: dict = {}  # device -> CounterReserve


def _reserve_for(device: torch.device) -> CounterReserve:
    """The device's reserve, made (and the device synchronised, so it is zero before any
    later capture replays) on the first eager split launch there."""
    reserve = _reserves.get(device)
    if reserve is None:
        reserve = _reserves[device] = CounterReserve(device)
        torch.cuda.synchronize(device)
    return reserve


def split_counters(n: int, device: torch.device) -> torch.Tensor:
    """n int32 zeros for the tickets of a split reduction (the forward with inter_splits).

    The kernel's last program of each row block resets its counter to zero, so one buffer
    per (device, stream) serves every launch without a memset; launches on one stream run
    in order, launches on two streams get two buffers. While a CUDA graph is captured each
    call takes its own slice of the device's CounterReserve (made at the first eager
    call), never shared with another call or graph; without one it allocates fresh zeros
    (their memset becomes part of the graph, their memory the graph's).
    """
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            reserve = _reserves.get(device)
            taken = reserve.take(n) if reserve is not None else None
            return taken if taken is not None else torch.zeros(n, dtype=torch.int32, device=device)
        _reserve_for(device)
        # the raw stream handle: no torch.cuda.Stream object built per call (decode calls
        # come here every time, where host time is most of the call)
        key = (device, torch._C._cuda_getCurrentRawStream(device.index))
    else:
        key = (device, 0)
    counters = _counters.get(key)
    if counters is None or counters.numel() < n:
        counters = _counters[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return counters
