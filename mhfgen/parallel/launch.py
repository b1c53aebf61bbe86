"""Run a function on N local processes of one process group (the CPU tests' launcher).

`run_on_ranks(fn, world_size)` starts world_size fresh interpreters (multiprocessing's
"spawn"), each joining a gloo (CPU) or NCCL (one GPU per rank) group through a free TCP
port on 127.0.0.1, calls fn(*args) and returns every rank's result, in rank order. A rank
that raises fails the call with its traceback; a group that does not finish within
timeout_s (a collective one rank never joined hangs the others) is terminated. `torchrun`
does the same job for scripts; this is for callers that want the results back as objects.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(backend: str | None = None) -> torch.device:
    """Join the group described by the usual environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, LOCAL_RANK: what torchrun sets); returns this rank's device: cuda:LOCAL_RANK
    with NCCL where CUDA is available, else the CPU with gloo (one intra-op thread: the
    ranks share the machine's cores)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return device


def _rank_main(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        init_process_group()
        try:
            # NOTE: pickled here, with the plain pickler: multiprocessing's own would pass
            # tensors as shared-memory handles, which die with this process
            results.put((rank, True, pickle.dumps(fn(*args))))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put((rank, False, traceback.format_exc()))


def run_on_ranks(
    fn: Callable[..., Any], world_size: int = 2, args: tuple = (), timeout_s: float = 300.0
) -> list[Any]:
    """fn(*args) on world_size spawned ranks of one process group; their results in rank
    order. fn and its results must pickle (a module-level function, plain data)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main, args=(rank, world_size, port, fn, args, results), daemon=True
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    got: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(
                    f"{fn.__name__} on {world_size} ranks did not finish within {timeout_s:.0f} s"
                ) from None
            if not ok:
                raise RuntimeError(f"rank {rank} of {world_size} failed in {fn.__name__}:\n{value}")
            got[rank] = pickle.loads(value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return [got[rank] for rank in range(world_size)]
