"""Launchers of the generated kernels: check shapes, allocate outputs, launch.

One module per kernel stem: flash_mhf_fwd, flash_mhf_bwd_dq, flash_mhf_bwd_dkv.
"""
from .flash_mhf_bwd_dkv import flash_mhf_bwd_dkv
from .flash_mhf_bwd_dq import flash_mhf_bwd_dq
from .flash_mhf_fwd import flash_mhf_fwd

__all__ = ["flash_mhf_fwd", "flash_mhf_bwd_dq", "flash_mhf_bwd_dkv"]
