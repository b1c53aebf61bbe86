"""Timing GPU calls the way a server runs them: replays of one CUDA graph, each call on
its own copy of the weights so that none finds them in the L2.

A decode-size forward reads every expert weight once and takes microseconds; launched
eagerly, its host path can take longer than its kernel. Serving replays CUDA graphs, so
`mhfgen bench --suite decode` and the tuner (decode-size forwards) time it that way:
rotation_copies(weight bytes) copies of the weights, one call on each, the round repeated
until the graph holds at least CALLS_PER_GRAPH calls (call_ms); graph_ms is the median
replay time, and that over the number of calls is a call's time.

Why at least CALLS_PER_GRAPH calls: a model's decode step replays one graph of all its
layers, so the graph's own launch (several microseconds before its first kernel starts)
is spread over dozens of calls. With one call per weight copy (4 copies of the 1.3B
layer's 69 MB) a quarter of that launch fell on every call: on an H100 a 1.3B call at 1
token took 28.06 us with 4 calls a graph and 27.13 with 32 (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

#: the weight copies of one graph replay take at least this many bytes together (over 4x
#: a Hopper L2)
ROTATE_BYTES = 4 * 60 * 2**20
#: and are at most this many: weights under ROTATE_BYTES / MAX_COPIES (1.9 MB) may then
#: be found in the L2, as a layer that small may be between two calls in a model
MAX_COPIES = 128


#: calls one timed graph holds at least (call_ms): a model's decode graph has a call per
#: layer, over which the graph's launch is spread
CALLS_PER_GRAPH = 32

#: milliseconds of untimed replays before graph_ms times one
WARMUP_MS = 25.0


def rotation_copies(nbytes: int) -> int:
    """Weight copies a graph of decode calls rotates through, one per call: at least two,
    together more than ROTATE_BYTES (so no call finds its weights in the L2), at most
    MAX_COPIES."""
    return min(MAX_COPIES, max(2, -(-ROTATE_BYTES // max(1, nbytes))))


def graph_ms(calls: Sequence[Callable[[], object]], replays: int = 20) -> float:
    """Median milliseconds of replaying one CUDA graph that makes every call once (each
    call is run once first, outside the capture: compiling and warming up; the graph is
    then replayed for WARMUP_MS before the timed replays, so that the first shape a
    benchmark times does not pay for the GPU's clocks rising from idle)."""
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    _warm_up(graph)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def call_ms(calls: Sequence[Callable[[], object]], replays: int = 20) -> float:
    """Milliseconds per call of `calls` (one round over the weight copies, rotation_copies)
    replayed in one CUDA graph: the round repeated until the graph holds at least
    CALLS_PER_GRAPH calls, the median replay (graph_ms) over the calls it makes."""
    rounds = -(-CALLS_PER_GRAPH // max(1, len(calls)))
    every = list(calls) * rounds
    return graph_ms(every, replays) / len(every)


def _warm_up(graph: torch.cuda.CUDAGraph) -> None:
    """Replay `graph` for about WARMUP_MS (at least once)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    more = min(10_000, int(WARMUP_MS / max(start.elapsed_time(end), 1e-3)))
    for _ in range(more):
        graph.replay()
    torch.cuda.synchronize()
