"""FlashMHF in PyTorch's distributed engine: tensor parallelism over heads, and the
parity checks of DDP, FSDP2 and tensor parallelism against one process (docs/DISTRIBUTED.md).

`parallelize_flashmhf(layer, device_mesh)` and the `HeadParallel` style
(for `torch.distributed.tensor.parallel.parallelize_module`) shard a FlashMHF by heads;
DDP and FSDP2 (`fully_shard`) need nothing from mhfgen.
"""

from .tensor import HEAD_PARAMETERS, HeadParallel, check_head_parallel, parallelize_flashmhf

__all__ = ["HEAD_PARAMETERS", "HeadParallel", "check_head_parallel", "parallelize_flashmhf"]
