"""Tensor parallelism over FlashMHF's heads (DTensor, `torch.distributed.tensor.parallel`).

FlashMHF's heads never mix between its two projections: head h of O depends only on
columns [h D, (h + 1) D) of Q = x W_in^T, on router[h], q_norm[h] and on kv head
h // (H / Hkv) of K, U and V. Cutting the heads into T consecutive groups, one per rank of
a 1-D mesh of size T with T | Hkv, rank t holds (the Megatron MLP layout, with heads for
the intermediate dimension):

    in_proj.weight   rows    [t d/T, (t+1) d/T)        ColwiseParallel: Q's heads [t H/T, ...)
    router, q_norm   heads   [t H/T, (t+1) H/T)         Shard(0)
    key, up, value   kv heads [t Hkv/T, (t+1) Hkv/T)    Shard(0): exactly the kv heads that
                                                        the rank's query heads use
    out_proj.weight  columns [t d/T, (t+1) d/T)         RowwiseParallel: partial y summed

The RMSNorm, the router and the core op (`mhfgen.flash_mhf`, the same generated kernels and
dispatcher as one device) run on each rank's local tensors: a problem of H/T heads and
Hkv/T kv heads. Communication is the projections' own: one all-reduce of y (B, L, d) in
the forward (out_proj) and one of dx in the backward (in_proj's replicated input), nothing
inside the FFN. x enters replicated and y leaves replicated, as plain tensors.

Use it as a style in a model's plan, `parallelize_module(model, tp_mesh,
{"blocks.*.ffn": HeadParallel()})`, or on one layer, `parallelize_flashmhf(layer,
tp_mesh)`. Both shard in place from rank 0's values (what `distribute_tensor` does).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from ..layers import FlashMHF

#: the layer's parameters sharded on their leading (kv-)head dimension
HEAD_PARAMETERS = ("router", "q_norm", "key", "up", "value")


def check_head_parallel(layer: nn.Module, device_mesh: DeviceMesh) -> int:
    """The tensor-parallel degree T of `device_mesh` for `layer`, after checking that the
    layer is an unsharded FlashMHF with its projections and that T divides its kv heads;
    ValueError or TypeError otherwise."""
    if not isinstance(layer, FlashMHF):
        raise TypeError(
            f"HeadParallel applies to mhfgen.FlashMHF layers, got {type(layer).__name__}"
        )
    if layer.in_proj is None or layer.out_proj is None:
        raise ValueError(
            "HeadParallel needs the layer's in_proj and out_proj (they split and "
            "join the heads); this FlashMHF was built with projections=False"
        )
    if not isinstance(device_mesh, DeviceMesh):
        raise TypeError(f"device_mesh must be a DeviceMesh, got {type(device_mesh).__name__}")
    if device_mesh.ndim != 1:
        raise ValueError(
            f"device_mesh must be 1-D (the tensor-parallel dimension, e.g. "
            f"mesh['tp'] of a 2-D mesh), got {device_mesh.ndim} dimensions"
        )
    degree = device_mesh.size()
    if layer.n_kv_heads % degree:
        raise ValueError(
            f"a tensor-parallel mesh of size {degree} does not divide the layer's "
            f"n_kv_heads={layer.n_kv_heads}: each rank must hold whole kv heads "
            f"with their query heads; use a mesh size dividing {layer.n_kv_heads}"
        )
    sharded = [name for name, p in layer.named_parameters() if isinstance(p, DTensor)]
    if sharded:
        raise ValueError(
            f"the layer is already sharded ({', '.join(sharded)} are DTensors); "
            f"apply HeadParallel to an unsharded FlashMHF, before fully_shard"
        )
    return degree


class HeadParallel(ParallelStyle):
    """A `parallelize_module` style for one `mhfgen.FlashMHF`: its heads split over the
    mesh (see the module docstring for the layout). The mesh must be 1-D and its size
    must divide n_kv_heads."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        check_head_parallel(module, device_mesh)
        parallelize_module(
            module,
            device_mesh,
            {"in_proj": ColwiseParallel(), "out_proj": RowwiseParallel()},
            src_data_rank=self.src_data_rank,
        )
        for name in HEAD_PARAMETERS:
            param = getattr(module, name)
            if param is None:  # q_norm without qk_norm
                continue
            shards = distribute_tensor(
                param.data, device_mesh, [Shard(0)], src_data_rank=self.src_data_rank
            )
            module.register_parameter(name, nn.Parameter(shards, param.requires_grad))
        return module


def parallelize_flashmhf(layer: FlashMHF, device_mesh: DeviceMesh) -> FlashMHF:
    """Shard `layer` over `device_mesh` (1-D, size dividing n_kv_heads) by heads, in place;
    returns the layer. Its forward takes and returns full (replicated) plain tensors."""
    return parallelize_module(layer, device_mesh, HeadParallel())
