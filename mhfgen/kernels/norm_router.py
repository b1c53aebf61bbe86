"""Fused Triton kernels of the layer's per-head RMSNorm of Q and its router.

Hand-written (not generated, not tuned): one forward and one backward kernel, each a single
launch, replacing the ~15 small PyTorch kernels per token chunk of mhfgen.norm_router's
PyTorch path. Per token t and head h, all math in fp32 whatever q's dtype (w: (H, D) the
norm weight, W_R: (H, D, E) the router weight):

    x = q[t, h],  rstd = 1 / sqrt(mean_d(x^2) + eps),  n = x * rstd,  qn = n * w[h]
    qn_r = fp32(qn rounded to q's dtype)                 (what the core and the router see)
    P = qn_r W_R[h],  g = sigmoid(P),  s = sum_e g,  R = g / max(s, 1e-20)

Without a norm weight qn = q (n, rstd and w do not exist). Backward, given dqn (q's shape,
or none = zero) and dR (R's shape, or none = zero):

    dg = (dR - [s > 1e-20] * sum_e(dR * R)) / max(s, 1e-20)      dP = dg * g * (1 - g)
    dqn' = dqn + dP W_R[h]^T                                     dW_R[h] = sum_t qn_r^T dP
    dw[h] = sum_t dqn' * n      dn = dqn' * w[h]      dq = rstd * (dn - n * mean_d(dn * n))

(without a norm weight dq = dqn'). Layouts: q, dqn: (B, L, H, D), any strides (T = B * L
tokens, t = b * L + l); R, dR: (B, L, H, E) (R is written contiguous in fp32, dR any
strides and float dtype); qn and dq are written contiguous in q's dtype. Tiles are padded
to D_PAD = next_pow2(max(D, 16)) and E_PAD = next_pow2(max(E, 16)) (tl.dot needs >= 16);
padded d do not enter mean_d (the sums divide by D), padded e have g = 0, rows t >= T are
zero and contribute nothing. Every tl.dot has fp32 operands; on a GPU they run as TF32
for bf16/fp16 q and as 3xTF32 (fp32-accurate) for fp32 q, IEEE fp32 in the interpreter
(forward_launch, backward_launch; the H200 sweep behind them is in the table there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import device as _device
from .. import reference
from ..spec import INTERPRETER, pdl_target
from ..tiling import cdiv
from .buffers import empty
from .launch import DirectLaunch
from .plans import plan_cache, remember, signature

#: the router's epsilon, baked into the kernels (the norm's, eps, is an argument)
ROUTER_EPS = tl.constexpr(reference.ROUTER_EPS)
#: tokens per program step in the interpreter (on a GPU: forward_launch, backward_launch)
BLOCK_T_INTERPRETER = 16
#: backward programs per SM on a GPU: SPLITS * H is about this times the SM count
PROGRAMS_PER_SM = 4
#: backward token splits per head in the interpreter (small, but > 1 to exercise the sum)
SPLITS_INTERPRETER = 3


def _interpreting(device: torch.device) -> bool:
    """Whether tensors on `device` run through Triton's interpreter (the CPU); a clear
    RuntimeError there when the interpreter is off (device.require_interpreter)."""
    if _device.target(device) != INTERPRETER:
        return False
    _device.require_interpreter()
    return True


@triton.jit
def _load_weights(
    NW,
    WR,
    h,
    s_nh,
    s_nd,
    s_wh,
    s_wd,
    s_we,
    D: tl.constexpr,
    E: tl.constexpr,
    D_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    """Head h's norm weight w (D_PAD,) (zero without HAS_NORM) and router tile wr
    (D_PAD, E_PAD), fp32, zero where d >= D or e >= E."""
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, E_PAD)
    d_ok = offs_d < D
    if HAS_NORM:
        w = tl.load(NW + h * s_nh + offs_d * s_nd, mask=d_ok, other=0.0).to(tl.float32)
    else:
        w = tl.zeros((D_PAD,), dtype=tl.float32)
    wr = tl.load(
        WR + h * s_wh + (offs_d * s_wd)[:, None] + (offs_e * s_we)[None, :],
        mask=d_ok[:, None] & (offs_e < E)[None, :],
        other=0.0,
    ).to(tl.float32)
    return w, wr


@triton.jit
def _load_rows(PTR, b, l, h, s_b, s_l, s_h, s_x, offs, row_ok, col_ok):
    """The fp32 tile of head h of a (B, L, H, X) tensor at strides (s_b, s_l, s_h, s_x):
    rows (b, l) (int64 vectors), columns offs; zero outside row_ok x col_ok."""
    ptrs = PTR + (b * s_b + l * s_l + h * s_h)[:, None] + (offs * s_x)[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_rows(PTR, t, h, H: tl.constexpr, X: tl.constexpr, offs, value, row_ok, col_ok):
    """Store the tile `value` in PTR's dtype at tokens t (int64 vector), head h, columns
    offs of a contiguous (T, H, X) tensor, inside row_ok x col_ok."""
    ptrs = PTR + (t * (H * X) + h * X)[:, None] + offs[None, :]
    tl.store(ptrs, value.to(PTR.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _forward_tile(
    Q,
    w,
    wr,
    t,
    h,
    T,
    L,
    eps,
    s_qb,
    s_ql,
    s_qh,
    s_qd,
    D: tl.constexpr,
    E: tl.constexpr,
    D_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    HAS_NORM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The forward values of a (BLOCK_T,) vector of tokens t (int64) of head h: n (x without
    HAS_NORM), rstd, qn (fp32, unrounded), qn_r, g, s. Rows t >= T and columns d >= D are
    zero, g = 0 for e >= E."""
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, E_PAD)
    row_ok = t < T
    b = t // L
    l = t - b * L
    x = _load_rows(Q, b, l, h, s_qb, s_ql, s_qh, s_qd, offs_d, row_ok, offs_d < D)
    if HAS_NORM:
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
        n = x * rstd[:, None]
        qn = n * w[None, :]
        qn_r = qn.to(Q.dtype.element_ty).to(tl.float32)
    else:
        rstd = tl.zeros_like(tl.sum(x, axis=1))
        n = x
        qn = x
        qn_r = x
    logits = tl.dot(qn_r, wr, input_precision=PRECISION)
    g = tl.where((offs_e < E)[None, :], tl.sigmoid(logits), 0.0)
    s = tl.sum(g, axis=1)
    return n, rstd, qn, qn_r, g, s


@triton.jit
def norm_router_fwd_kernel(
    Q,
    NW,
    WR,
    QN,
    R,
    T,
    L,
    eps,
    s_qb,
    s_ql,
    s_qh,
    s_qd,
    s_nh,
    s_nd,
    s_wh,
    s_wd,
    s_we,
    H: tl.constexpr,
    D: tl.constexpr,
    E: tl.constexpr,
    D_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    HAS_NORM: tl.constexpr,
    PRECISION: tl.constexpr,
    LAUNCH_DEPENDENTS: tl.constexpr,
):
    """Grid (cdiv(T, BLOCK_T), H): one (BLOCK_T, D_PAD) tile of head h per program; writes
    qn (contiguous (B, L, H, D), q's dtype; only with HAS_NORM) and R (contiguous
    (B, L, H, E), fp32). Formulas: module docstring. LAUNCH_DEPENDENTS (sm90+): each
    program signals griddepcontrol.launch_dependents as it starts, so a next kernel
    launched with programmatic dependent launch (the FP8 decode forward's `pdl`) may start
    its prologue and L2 prefetch of its weights at once; it waits for this kernel's end
    before it reads qn and R."""
    if LAUNCH_DEPENDENTS:
        tl.extra.cuda.gdc_launch_dependents()
    pid_t = tl.program_id(0)
    h = tl.program_id(1)
    t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, E_PAD)
    row_ok = t < T
    w, wr = _load_weights(NW, WR, h, s_nh, s_nd, s_wh, s_wd, s_we, D, E, D_PAD, E_PAD, HAS_NORM)
    n, rstd, qn, qn_r, g, s = _forward_tile(
        Q, w, wr, t, h, T, L, eps, s_qb, s_ql, s_qh, s_qd, D, E, D_PAD, E_PAD, HAS_NORM, PRECISION
    )
    if HAS_NORM:
        _store_rows(QN, t, h, H, D, offs_d, qn, row_ok, offs_d < D)
    r = g / tl.maximum(s, ROUTER_EPS)[:, None]
    _store_rows(R, t, h, H, E, offs_e, r, row_ok, offs_e < E)


@triton.jit
def norm_router_bwd_kernel(
    Q,
    NW,
    WR,
    DQN,
    DR,
    DQ,
    DW_PART,
    DWR_PART,
    T,
    L,
    TOKENS_PER_SPLIT,
    eps,
    s_qb,
    s_ql,
    s_qh,
    s_qd,
    s_nh,
    s_nd,
    s_wh,
    s_wd,
    s_we,
    s_gb,
    s_gl,
    s_gh,
    s_gd,
    s_rb,
    s_rl,
    s_rh,
    s_re,
    H: tl.constexpr,
    D: tl.constexpr,
    E: tl.constexpr,
    D_PAD: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_DQN: tl.constexpr,
    HAS_DR: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (SPLITS, H): program (s, h) walks tokens [s * TOKENS_PER_SPLIT, (s + 1) *
    TOKENS_PER_SPLIT) of head h in BLOCK_T steps, recomputing the forward; writes dq
    (contiguous, q's dtype) and its fp32 partial sums dW_R -> DWR_PART[s, h] (D, E) and
    dw -> DW_PART[s, h] (D,) (only with HAS_NORM). Formulas: module docstring."""
    split = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, E_PAD)
    d_ok = offs_d < D
    e_ok = offs_e < E
    lo = split.to(tl.int64) * TOKENS_PER_SPLIT
    hi = tl.minimum(lo + TOKENS_PER_SPLIT, T)
    dwr_acc = tl.zeros((D_PAD, E_PAD), dtype=tl.float32)
    dw_acc = tl.zeros((D_PAD,), dtype=tl.float32)
    w, wr = _load_weights(
        NW, WR, h, s_nh, s_nd, s_wh, s_wd, s_we, D, E, D_PAD, E_PAD, HAS_NORM
    )  # once per program
    for start in range(lo, hi, BLOCK_T):
        t = start + tl.arange(0, BLOCK_T)
        row_ok = t < hi
        n, rstd, qn, qn_r, g, s = _forward_tile(
            Q,
            w,
            wr,
            t,
            h,
            hi,
            L,
            eps,
            s_qb,
            s_ql,
            s_qh,
            s_qd,
            D,
            E,
            D_PAD,
            E_PAD,
            HAS_NORM,
            PRECISION,
        )
        b = t // L
        l = t - b * L
        if HAS_DQN:
            dqn = _load_rows(DQN, b, l, h, s_gb, s_gl, s_gh, s_gd, offs_d, row_ok, d_ok)
        else:
            dqn = tl.zeros((BLOCK_T, D_PAD), dtype=tl.float32)
        if HAS_DR:
            dr = _load_rows(DR, b, l, h, s_rb, s_rl, s_rh, s_re, offs_e, row_ok, e_ok)
            s_c = tl.maximum(s, ROUTER_EPS)
            r = g / s_c[:, None]
            dot_r = tl.where(s > ROUTER_EPS, tl.sum(dr * r, axis=1), 0.0)
            dg = (dr - dot_r[:, None]) / s_c[:, None]
            dp = dg * g * (1.0 - g)  # g = 0 (dp = 0) for e >= E and for rows t >= hi
            dqn += tl.dot(dp, tl.trans(wr), input_precision=PRECISION)
            dwr_acc += tl.dot(tl.trans(qn_r), dp, input_precision=PRECISION)
        if HAS_NORM:
            dw_acc += tl.sum(dqn * n, axis=0)  # n = 0 for rows t >= hi
            dn = dqn * w[None, :]
            mean_dn_n = tl.sum(dn * n, axis=1) / D
            dx = rstd[:, None] * (dn - n * mean_dn_n[:, None])
        else:
            dx = dqn
        _store_rows(DQ, t, h, H, D, offs_d, dx, row_ok, d_ok)
    part = split * H + h
    tl.store(
        DWR_PART + part * (D * E) + (offs_d * E)[:, None] + offs_e[None, :],
        dwr_acc,
        mask=d_ok[:, None] & e_ok[None, :],
    )
    if HAS_NORM:
        tl.store(DW_PART + part * D + offs_d, dw_acc, mask=d_ok)


def _pad(size: int) -> int:
    return triton.next_power_of_2(max(size, 16))


#: H200 sweeps behind the launches below (`python3 benchmarks/norm_router_check.py --sweep`,
#: 16384 tokens, q bf16, fp32 weights; docs/figures/norm_router_h200.md), in ms:
#:                     1.3B (D 128, E 22)   D 128, E 64    D 256, E 32
#: forward  IEEE, old  0.154 (32, 8)        3.40 (32, 8)   2.22 (32, 8)   (CUDA-core dots)
#:          TF32       0.066 (64, 4)        0.102 (64, 4)  0.077 (64, 4)  R error 1e-4
#:          3xTF32     0.116 (64, 4)        0.259 (64, 4)  0.159 (64, 4)  R error as IEEE
#: backward TF32       0.224 (32, 4)        0.297 (16, 4)  0.211 (16, 4)  dW_R error 3.9e-4
#:          3xTF32     0.402 (16, 4)        0.720 (16, 8)  0.668 (16, 8)  errors as IEEE
#:          IEEE best  0.726 (16, 4)        1.006 (16, 4)  0.916 (16, 8)
#: (block_t, num_warps) in brackets; errors relative to the fp32 PyTorch path. TF32 errors
#: are 10x below bf16's resolution, so bf16/fp16 inputs get TF32; fp32 inputs get 3xTF32,
#: as accurate as IEEE dots here and faster. Tiles above 8192 elements (D = 256 with
#: E > 32) were not measured.
_TF32_DTYPES = (torch.bfloat16, torch.float16)


def forward_launch(dtype: torch.dtype, d_pad: int, e_pad: int, interpreter: bool = False) -> dict:
    """The forward's default launch: block_t (tokens per step), num_warps and the router
    dot's precision; (64, 4) on every measured shape (see the table above), (32, 8) for
    unmeasured tiles above 8192 elements; the interpreter (16, 4) with IEEE dots."""
    if interpreter:
        return dict(block_t=BLOCK_T_INTERPRETER, num_warps=4, precision="ieee")
    precision = "tf32" if dtype in _TF32_DTYPES else "tf32x3"
    if d_pad * e_pad > 8192:
        return dict(block_t=32, num_warps=8, precision=precision)
    return dict(block_t=64, num_warps=4, precision=precision)


def backward_launch(dtype: torch.dtype, d_pad: int, e_pad: int, interpreter: bool = False) -> dict:
    """The backward's default launch: block_t, num_warps and dot precision (the table
    above): TF32 with (32, 4) up to 4096-element (D_PAD, E_PAD) tiles and (16, 4) above;
    3xTF32 with (16, 4) up to 4096 and (16, 8) above; the interpreter (16, 4), IEEE."""
    if interpreter:
        return dict(block_t=BLOCK_T_INTERPRETER, num_warps=4, precision="ieee")
    small = d_pad * e_pad <= 4096
    if dtype in _TF32_DTYPES:
        return dict(block_t=32 if small else 16, num_warps=4, precision="tf32")
    return dict(block_t=16, num_warps=4 if small else 8, precision="tf32x3")


def _check(q, norm_weight, w_router) -> tuple[int, int, int, int, int]:
    for name, t in (("q", q), ("w_router", w_router), ("norm_weight", norm_weight)):
        if t is None and name == "norm_weight":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
    if q.dim() != 4:
        raise ValueError(f"q must be (B, L, H, D), got shape {tuple(q.shape)}")
    B, L, H, D = q.shape
    if w_router.dim() != 3 or tuple(w_router.shape[:2]) != (H, D) or w_router.shape[2] < 1:
        raise ValueError(f"w_router must be (H={H}, D={D}, E), got {tuple(w_router.shape)}")
    if norm_weight is not None and tuple(norm_weight.shape) != (H, D):
        raise ValueError(f"norm_weight must be (H={H}, D={D}), got {tuple(norm_weight.shape)}")
    return B, L, H, D, w_router.shape[2]


def _meta(H: int, D: int, E: int, has_norm: bool, launch: dict, **flags: bool) -> dict:
    """The constexprs both kernels take (and the backward's `flags`) and the launch's
    num_warps, for q (.., H, D), E experts and a launch of block_t, num_warps, precision."""
    return dict(
        H=H,
        D=D,
        E=E,
        D_PAD=_pad(D),
        E_PAD=_pad(E),
        BLOCK_T=launch["block_t"],
        HAS_NORM=has_norm,
        **flags,
        PRECISION=launch["precision"],
        num_warps=launch["num_warps"],
    )


def _weight_args(norm_weight, w_router):
    nw_args = (norm_weight.stride(0), norm_weight.stride(1)) if norm_weight is not None else (0, 0)
    return (norm_weight if norm_weight is not None else w_router), nw_args, w_router.stride()


def norm_router_fwd(
    q: torch.Tensor,
    norm_weight: torch.Tensor | None,
    w_router: torch.Tensor,
    launch: dict | None = None,
    eps: float = reference.RMS_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(qn, R) of q through norm_router_fwd_kernel, one launch.

    q: (B, L, H, D), any strides, float16/bfloat16/float32; norm_weight: (H, D) or None;
    w_router: (H, D, E). Per token and head, in fp32: rstd = 1 / sqrt(mean_d(q^2) + eps),
    qn = q * rstd * norm_weight[h] (rounded to q's dtype), R = g / max(sum_e g, 1e-20)
    with g = sigmoid(qn W_R[h]). Returns qn: (B, L, H, D) contiguous in q's dtype (q
    itself when norm_weight is None) and R: (B, L, H, E) contiguous fp32.

    The launch is forward_launch's; `launch` overrides any of block_t, num_warps,
    precision for experiments (benchmarks/norm_router_check.py --sweep; such calls plan
    afresh and are not cached).
    """
    if launch:
        plan = _fwd_plan(q, norm_weight, w_router, launch, eps)
        return _fwd_run(plan, q, norm_weight, w_router)
    key = _plan_key(q, norm_weight, w_router, eps)
    plan = _fwd_plans.get(key)
    if plan is None:
        plan = remember(_fwd_plans, key, _fwd_plan(q, norm_weight, w_router, eps=eps))
    return _fwd_run(plan, q, norm_weight, w_router)


def _plan_key(q, norm_weight, w_router, eps: float, *grads) -> tuple:
    """A plan's key: the signatures of q, the weights and the gradients given (None where
    absent) and eps; a TypeError naming the argument where one is not a tensor."""
    try:
        tensors = (q, norm_weight, w_router, *grads)
        return (*(None if t is None else signature(t) for t in tensors), eps)
    except AttributeError:  # not a tensor: the checks' TypeError names it
        _check(q, norm_weight, w_router)
        raise


def _launches_dependents(device: torch.device) -> bool:
    """Whether the forward signals launch_dependents: on sm90+ GPUs (griddepcontrol)."""
    return pdl_target(_device.target(device))


def _fwd_run(plan, q, norm_weight, w_router) -> tuple[torch.Tensor, torch.Tensor]:
    qn = empty(q.shape, q.dtype, q.device) if norm_weight is not None else q
    r = empty(plan.r_shape, torch.float32, q.device)
    if plan.launch is not None:
        plan.launch(q, norm_weight if norm_weight is not None else w_router, w_router, qn, r)
    return qn, r


@dataclass(frozen=True)
class FwdPlan:
    """What a norm_router_fwd call's signature decides, computed once."""

    r_shape: tuple  # (B, L, H, E)
    launch: DirectLaunch | None  # None when there are no tokens or heads


_fwd_plans = plan_cache()


def _fwd_plan(
    q, norm_weight, w_router, launch: dict | None = None, eps: float = reference.RMS_EPS
) -> FwdPlan:
    B, L, H, D, E = _check(q, norm_weight, w_router)
    T = B * L
    if T == 0 or H == 0:
        return FwdPlan((B, L, H, E), None)
    d_pad, e_pad = _pad(D), _pad(E)
    launch = {**forward_launch(q.dtype, d_pad, e_pad, _interpreting(q.device)), **(launch or {})}
    block_t = launch["block_t"]
    _, nw_strides, wr_strides = _weight_args(norm_weight, w_router)
    meta = _meta(
        H, D, E, norm_weight is not None, launch, LAUNCH_DEPENDENTS=_launches_dependents(q.device)
    )
    scalars = (T, L, float(eps), *q.stride()[:4], *nw_strides, *wr_strides)
    return FwdPlan(
        (B, L, H, E), DirectLaunch(norm_router_fwd_kernel, (cdiv(T, block_t), H), scalars, meta)
    )


def _splits(q: torch.Tensor, heads: int, blocks: int) -> int:
    if _interpreting(q.device):
        wanted = SPLITS_INTERPRETER
    else:
        wanted = cdiv(PROGRAMS_PER_SM * _device.sm_count(q.device), heads)
    return max(1, min(wanted, blocks))


def norm_router_bwd(
    q: torch.Tensor,
    norm_weight: torch.Tensor | None,
    w_router: torch.Tensor,
    dqn: torch.Tensor | None,
    dr: torch.Tensor | None,
    launch: dict | None = None,
    eps: float = reference.RMS_EPS,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(dq, dnorm_weight, dw_router) of norm_router_fwd through norm_router_bwd_kernel.

    q, norm_weight, w_router: as for norm_router_fwd; dqn: (B, L, H, D) gradient of qn
    (any float dtype and strides) or None (zero); dr: (B, L, H, E) gradient of R or None
    (zero). With g, s, R, n, rstd recomputed per token and head in fp32:
    dg = (dr - [s > 1e-20] sum_e(dr R)) / max(s, 1e-20), dP = dg g (1 - g),
    dqn' = dqn + dP W_R[h]^T, dW_R[h] = sum_t qn^T dP, dw[h] = sum_t dqn' n,
    dq = rstd (dqn' w - n mean_d(dqn' w n)) (dq = dqn' without norm_weight).
    SPLITS x H programs each own a contiguous share of the tokens and write fp32 partials
    (SPLITS, H, D, E) and (SPLITS, H, D); they are summed here over SPLITS (deterministic)
    and cast to the parameters' dtypes. Returns dq (B, L, H, D) contiguous in q's dtype,
    dnorm_weight (H, D) (None without norm_weight) and dw_router (H, D, E).

    The launch is backward_launch's (TF32 router dots for bf16/fp16 q, 3xTF32 for fp32);
    `launch` overrides any of block_t, num_warps, splits (programs per head), precision
    ("ieee", "tf32x3" or "tf32") for experiments (benchmarks/norm_router_check.py --sweep).
    """
    if launch:
        plan = _bwd_plan(q, norm_weight, w_router, dqn, dr, launch, eps)
        return _bwd_run(plan, q, norm_weight, w_router, dqn, dr)
    key = _plan_key(q, norm_weight, w_router, eps, dqn, dr)
    plan = _bwd_plans.get(key)
    if plan is None:
        plan = remember(_bwd_plans, key, _bwd_plan(q, norm_weight, w_router, dqn, dr, eps=eps))
    return _bwd_run(plan, q, norm_weight, w_router, dqn, dr)


@dataclass(frozen=True)
class BwdPlan:
    """What a norm_router_bwd call's signature decides, computed once."""

    part_shapes: tuple  # the fp32 partials' shapes: (SPLITS, H, D, E), (SPLITS, H, D) or None
    launch: DirectLaunch | None  # None when there are no tokens or heads


_bwd_plans = plan_cache()


def _bwd_plan(
    q, norm_weight, w_router, dqn, dr, launch: dict | None = None, eps: float = reference.RMS_EPS
) -> BwdPlan:
    B, L, H, D, E = _check(q, norm_weight, w_router)
    if dqn is not None and tuple(dqn.shape) != (B, L, H, D):
        raise ValueError(f"dqn must have q's shape {tuple(q.shape)}, got {tuple(dqn.shape)}")
    if dr is not None and tuple(dr.shape) != (B, L, H, E):
        raise ValueError(f"dr must be (B, L, H, E) = {(B, L, H, E)}, got {tuple(dr.shape)}")
    T = B * L
    has_norm = norm_weight is not None
    if T == 0 or H == 0:
        return BwdPlan((), None)
    d_pad, e_pad = _pad(D), _pad(E)
    launch = {**backward_launch(q.dtype, d_pad, e_pad, _interpreting(q.device)), **(launch or {})}
    block_t = launch["block_t"]
    blocks = cdiv(T, block_t)
    splits = (
        max(1, min(launch["splits"], blocks)) if launch.get("splits") else _splits(q, H, blocks)
    )
    tokens_per_split = cdiv(blocks, splits) * block_t
    splits = cdiv(T, tokens_per_split)  # every program has tokens
    _, nw_strides, wr_strides = _weight_args(norm_weight, w_router)
    dqn_strides = dqn.stride() if dqn is not None else (0, 0, 0, 0)
    dr_strides = dr.stride() if dr is not None else (0, 0, 0, 0)
    scalars = (
        T,
        L,
        tokens_per_split,
        float(eps),
        *q.stride(),
        *nw_strides,
        *wr_strides,
        *dqn_strides,
        *dr_strides,
    )
    meta = _meta(H, D, E, has_norm, launch, HAS_DQN=dqn is not None, HAS_DR=dr is not None)
    return BwdPlan(
        ((splits, H, D, E), (splits, H, D) if has_norm else None),
        DirectLaunch(norm_router_bwd_kernel, (splits, H), scalars, meta),
    )


def _bwd_run(plan: BwdPlan, q, norm_weight, w_router, dqn, dr):
    """Allocate dq and the fp32 partials, launch, and sum the partials over the splits."""
    has_norm = norm_weight is not None
    dq = empty(q.shape, q.dtype, q.device)
    if plan.launch is None:
        dq.zero_()
        dnw = torch.zeros_like(norm_weight) if has_norm else None
        return dq, dnw, torch.zeros_like(w_router)
    dwr_shape, dw_shape = plan.part_shapes
    dwr_part = empty(dwr_shape, torch.float32, q.device)
    dw_part = empty(dw_shape, torch.float32, q.device) if has_norm else dwr_part
    plan.launch(
        q,
        norm_weight if has_norm else w_router,
        w_router,
        dqn if dqn is not None else q,
        dr if dr is not None else dwr_part,
        dq,
        dw_part,
        dwr_part,
    )
    dw_router = dwr_part.sum(0).to(w_router.dtype)
    dnorm_weight = dw_part.sum(0).to(norm_weight.dtype) if has_norm else None
    return dq, dnorm_weight, dw_router
