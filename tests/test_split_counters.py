"""The split reduction's ticket counters (mhfgen.kernels.buffers): one buffer per stream
for eager launches, and under CUDA graph capture a slice of a reserve zeroed once per
device, never shared between captured calls. The capture itself needs a GPU (the last
test)."""

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
import torch

from mhfgen.kernels import buffers


def test_a_reserve_hands_out_disjoint_aligned_slices_of_zeros():
    reserve = buffers.CounterReserve(torch.device("cpu"), size=100)
    a, b = reserve.take(8), reserve.take(33)
    assert a.numel() == 8 and b.numel() == 33
    assert b.data_ptr() - a.data_ptr() == buffers.CounterReserve.ALIGN * 4
    assert int(a.abs().sum()) == int(b.abs().sum()) == 0
    assert reserve.take(30) is None  # 96 of 100 used: 30 do not fit
    assert reserve.take(4) is not None and reserve.take(1) is None


def test_eager_cpu_launches_share_one_buffer():
    cpu = torch.device("cpu")
    assert buffers.split_counters(8, cpu).data_ptr() == buffers.split_counters(16, cpu).data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_captured_split_launches_take_their_own_counters_and_match_eager():
    """Two graphs of split decode launches (16-bit weights; FP8 on sm90 too): each
    captured call takes a new slice of the reserve (no memset node), and every replay
    gives the eager output bit for bit."""
    from mhfgen import flash_mhf, flash_mhf_fp8
    from mhfgen.fp8 import quantize_experts

    dev = torch.device("cuda", torch.cuda.current_device())
    H, D, E, De = 8, 128, 11, 256
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, H, D, generator=gen).to(dev, torch.bfloat16)
    r = torch.softmax(torch.randn(1, 1, H, E, generator=gen), -1).to(dev)
    k, u, v = (
        (torch.randn(H, E, De, D, generator=gen) * 0.05).to(dev, torch.bfloat16) for _ in "kuv"
    )
    calls = [lambda: flash_mhf(q, k, u, v, r)]
    if torch.cuda.get_device_capability(dev) == (9, 0):
        w8 = quantize_experts(k, u, v)
        calls.append(lambda: flash_mhf_fp8(q, *w8[:3], r, w8[3]))
    with torch.no_grad():
        eager = [fn() for fn in calls]  # also makes the reserve
        torch.cuda.synchronize(dev)
        reserve = buffers._reserves[dev]
        graphs, outs = [], []
        for _ in range(2):
            before = reserve.next
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs.append([fn() for fn in calls])
            assert reserve.next > before  # each capture took slices of its own
            graphs.append(graph)
        for _ in range(3):
            for graph, got in zip(graphs, outs):
                graph.replay()
                torch.cuda.synchronize(dev)
                for want, o in zip(eager, got):
                    assert torch.equal(o, want)
