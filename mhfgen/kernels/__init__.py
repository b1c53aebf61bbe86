"""Launchers of the generated kernels: check shapes, allocate outputs, launch.

One module per variant stem (flash_mhf_fwd, flash_mhf_fwd_ws, flash_mhf_bwd_dq,
flash_mhf_bwd_dkv, flash_mhf_bwd_fused; see mhfgen.registry); each launcher runs its own
variant, with the given config or the dispatcher's choice among that variant's configs.
`forward`, `backward_dq` and `backward_dkv` run an op instead: the dispatcher picks the
variant too; `backward` runs every gradient in the form the dispatcher picks (one pass or
the split pair; mhfgen.ops calls `forward` and `backward`).
"""

from .dispatched import backward, backward_dkv, backward_dq, forward, run_op
from .flash_mhf_bwd_dkv import flash_mhf_bwd_dkv
from .flash_mhf_bwd_dq import flash_mhf_bwd_dq
from .flash_mhf_bwd_fused import flash_mhf_bwd_fused
from .flash_mhf_fwd import flash_mhf_fwd

__all__ = [
    "flash_mhf_fwd",
    "flash_mhf_bwd_dq",
    "flash_mhf_bwd_dkv",
    "flash_mhf_bwd_fused",
    "forward",
    "backward",
    "backward_dq",
    "backward_dkv",
    "run_op",
]
