"""The launch path every variant shares, and the ops run through dispatch.

Each variant's own launcher lives in its module, mhfgen/variants/<stem>.py, and runs that
variant with the given config or the dispatcher's choice among its configs. This package
holds what those launchers share (launch plans and their caches: plans; the first launch
and the config a call runs with: configs; launching a compiled binary directly: launch;
output buffers: buffers; the one-pass backward's chunks: bwd_chunks; the Gluon kernels'
common pieces: sm90) and the op runners: `forward`, `backward_dq` and `backward_dkv` run
an op, the dispatcher picking the variant too; `backward` runs every gradient in the form
the dispatcher picks (one pass or the split pair; mhfgen.ops calls `forward` and
`backward`).
"""

from .dispatched import backward, backward_dkv, backward_dq, forward, run_op

__all__ = ["forward", "backward", "backward_dq", "backward_dkv", "run_op"]
