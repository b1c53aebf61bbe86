"""Watching a GPU kernel's first launches for a hang (an mbarrier deadlock never ends), for
the GPU check scripts of this folder (gluon_fwd_check.py, bwd_ws_check.py)."""
from __future__ import annotations

import time

import torch


class Hang(Exception):
    """A launch that did not complete within its timeout: the CUDA context is unusable."""


def finish(fn, timeout_s: float = 20.0):
    """Run fn once and wait for the GPU with a timeout (a deadlocked kernel never ends)."""
    out = fn()
    event = torch.cuda.Event()
    event.record()
    t0 = time.time()
    while not event.query():
        if time.time() - t0 > timeout_s:
            raise Hang(f"no completion within {timeout_s:.0f} s")
        time.sleep(0.002)
    return out
