"""The verification matrix: every registered variant, forced one at a time, on every
documented input form, against the float64 reference, every output on every row.

`mhfgen verify` proves what the dispatcher picks; the matrix proves each variant alone,
whether or not dispatch would pick it for the call (a tuner may), on the input forms the
public op documents:

- r (B, L, H, E) in float32 and in q's dtype;
- q (B, L, H, D) as a view of a projection output (its rows contiguous), as a slice of a
  wider buffer (head stride D + 8) and as a transposed (B, H, L, D) buffer; k, u, v
  contiguous and as slices of wider buffers; dO in q's layout;
- B > 1, L = 1, L = 37 and the tile boundaries 64 and 128 plus and minus one;
- grouped kv heads (Hkv < H), head_dim 64, 96 and 128, E = 1, an expert_dim of 80;
- float32, float16 and bfloat16 wherever the variant takes them; and the FP8-weight dtypes
  (bfloat16_e4m3, float16_e4m3) for the forward variants that take them: the weights of
  each form quantised (mhfgen.verification.fp8_inputs), the reference computed on their
  dequantised values, o the one output compared.

Every output a variant returns is compared with the reference twice: the relative
Frobenius error of the whole tensor against the dtype's tolerance, and the worst row's
(mhfgen.tolerances.row_error) against ROW_FACTOR times it, so one wrong row among
thousands is a failure. The launchers' output buffers are NaN-filled before each launch
(mhfgen.kernels.buffers.set_poison), so an element a kernel does not write shows.

Layouts of the rows compared: o, dq and dO rows are (b, l, h) with D values; dr rows
(b, l, h) with E values; dk, du, dv rows (g, e, n) with D values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .tolerances import ROW_FACTOR, relative_error, row_error, tolerance_for
from .verification import Case, fp8_inputs, make_inputs, reference_outputs


@dataclass(frozen=True)
class InputForm:
    """How the inputs of one matrix row are laid out in memory.

    r:       'float32', or 'q' for q's dtype.
    q:       'view' (rows of a (B, L, H * D) projection), 'strided' (a slice of a
             (B, L, H, D + 8) buffer) or 'transposed' (a (B, H, L, D) buffer transposed);
             dO takes the same layout.
    weights: 'contiguous', or 'strided' (k, u, v slices of (Hkv, E, De, D + 8) buffers).
    """

    name: str
    r: str = "float32"
    q: str = "view"
    weights: str = "contiguous"

    def r_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """r's dtype where q, k, u and v are in `dtype`."""
        return torch.float32 if self.r == "float32" else dtype


FORMS = (
    InputForm("base"),
    InputForm("r_narrow", r="q"),
    InputForm("strided", q="strided", weights="strided"),
    InputForm("transposed_r_narrow", r="q", q="transposed"),
)


@dataclass(frozen=True)
class MatrixShape:
    """One spec's sizes and the (batch, seqlen) token layouts it runs at."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    expert_dim: int
    tokens: tuple[tuple[int, int], ...]

    def cases(self) -> list[Case]:
        return [
            Case(
                f"{self.name}_B{b}_L{seq}",
                b,
                seq,
                self.heads,
                self.kv_heads,
                self.head_dim,
                self.experts,
                self.expert_dim,
            )
            for b, seq in self.tokens
        ]


#: (batch, seqlen): L = 1, L = 37, and both sides of the 64- and 128-row tiles, B > 1
TILE_EDGES = ((1, 1), (1, 37), (3, 63), (2, 65), (1, 127), (2, 129))

#: L = 1 and 37, and a last tile of one row past 128 with B > 1
FEW_EDGES = ((1, 1), (1, 37), (2, 129))

#: the GPU matrix: GQA at D = 128, D = 96 with De = 80, E = 1 with D = 64 and a group of
#: four, and the 1.3B preset's heads at the token counts the r-dtype defect showed at;
#: then the head dims the Gluon backward pads (48 to 64, 80 to 112 to 128) with an
#: expert width it takes (a multiple of 64), GQA among them
GPU_SHAPES = (
    MatrixShape("gqa_D128", 8, 2, 128, 3, 256, TILE_EDGES),
    MatrixShape("D96_De80", 4, 4, 96, 3, 80, TILE_EDGES),
    MatrixShape("E1_D64_gqa4", 4, 1, 64, 1, 512, TILE_EDGES),
    MatrixShape("1.3B_heads", 16, 16, 128, 22, 256, ((1, 128), (1, 2048))),
    MatrixShape("gqa_D96", 8, 2, 96, 3, 128, TILE_EDGES),
    MatrixShape("D80", 4, 4, 80, 2, 128, FEW_EDGES),
    MatrixShape("gqa_D112", 4, 2, 112, 2, 192, FEW_EDGES),
    MatrixShape("D48", 4, 4, 48, 2, 64, FEW_EDGES),
)
#: small shapes that still reach every variant, for slow runs (compute-sanitizer's memcheck)
MEMCHECK_SHAPES = (
    MatrixShape("small_gqa_D128", 4, 2, 128, 2, 128, ((1, 1), (2, 65))),
    MatrixShape("small_D96_De80", 2, 2, 96, 2, 80, ((2, 65),)),
)
#: the CPU matrix (Triton's interpreter): the same forms on small sizes
CPU_SHAPES = (
    MatrixShape("gqa_D32", 4, 2, 32, 2, 32, ((1, 1), (1, 37), (2, 17))),
    MatrixShape("D96_De80", 2, 2, 96, 2, 80, ((2, 9),)),
    MatrixShape("E1_D16", 2, 1, 16, 1, 64, ((1, 5), (3, 4))),
)


def shapes_named(names: str | None, gpu: bool) -> tuple[MatrixShape, ...]:
    """The matrix shapes to run: all of this machine's kind, or those named (comma list;
    on a GPU the MEMCHECK_SHAPES too)."""
    table = GPU_SHAPES if gpu else CPU_SHAPES
    if not names:
        return table
    known = {s.name: s for s in table + (MEMCHECK_SHAPES if gpu else ())}
    wanted = [n for n in names.split(",") if n]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(
            f"unknown matrix shape(s) {', '.join(unknown)}; known here: {', '.join(known)}"
        )
    return tuple(known[n] for n in wanted)


def form_inputs(case: Case, form: InputForm, dtype: torch.dtype, device, seed: int = 0):
    """(q, k, u, v, r, do) of `case` in `dtype` on `device`, laid out as `form` says. The
    values are those of verification.make_inputs; the layouts are built on the device
    (a `.to(device)` would make a non-dense tensor contiguous)."""
    q, k, u, v, r, do = make_inputs(case, torch.float32, "cpu", seed=seed)
    q, do = (_rows_layout(t.to(device=device, dtype=dtype), form.q) for t in (q, do))
    k, u, v = (_weights_layout(w.to(device=device, dtype=dtype), form.weights) for w in (k, u, v))
    return q, k, u, v, r.to(device=device, dtype=form.r_dtype(dtype)), do


def _rows_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "view":
        return t.contiguous()
    if layout == "strided":
        return _padded_rows(t)
    if layout == "transposed":
        B, L, H, D = t.shape
        buf = torch.empty((B, H, L, D), dtype=t.dtype, device=t.device)
        buf.copy_(t.transpose(1, 2))
        return buf.transpose(1, 2)
    raise ValueError(f"unknown q layout {layout!r}")


def _weights_layout(w: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return w.contiguous()
    if layout == "strided":
        return _padded_rows(w)
    raise ValueError(f"unknown weights layout {layout!r}")


def _padded_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as a view of a buffer 8 NaN-filled elements wider in its last dimension."""
    D = t.shape[-1]
    buf = torch.full((*t.shape[:-1], D + 8), float("nan"), dtype=t.dtype, device=t.device)
    buf[..., :D] = t
    return buf[..., :D]


@dataclass
class MatrixRow:
    """The result of one variant on one (case, form, dtype): 'ok', 'FAIL ...', or 'n/a'
    with the reason the variant does not take the spec."""

    shape: str
    batch: int
    seqlen: int
    form: str
    dtype: str
    variant: str
    status: str
    errors: dict = field(default_factory=dict)  # output -> [tensor error, worst row error]
    tolerances: dict = field(default_factory=dict)  # output -> tensor tolerance

    @property
    def ok(self) -> bool:
        return not self.status.startswith("FAIL")

    def as_dict(self) -> dict:
        return asdict(self)


def check_variant(
    variant, inputs: tuple, expected: dict, dtype: torch.dtype, fp8: tuple | None = None
) -> tuple[str, dict, dict]:
    """(status, errors, tolerances) of `variant` forced on `inputs` (its own tuned or
    built-in config): each of its outputs against `expected`, whole and row by row, each
    against its bar (mhfgen.tolerances.tolerance_for). With `fp8`, the FP8-weight forward's
    arguments (q, k8, u8, v8, r, scales), the variant runs on those instead."""
    q, k, u, v, r, do = inputs
    if fp8 is not None:
        tensors = fp8
    else:
        tensors = (q, k, u, v, r, do) if variant.takes_grad else (q, k, u, v, r)
    try:
        out = variant.launch(*tensors)
    except Exception as exc:  # noqa: BLE001 - a failing variant is a failed row
        reason = (str(exc).strip().splitlines() or [""])[0][:100]
        return f"FAIL {type(exc).__name__}: {reason}", {}, {}
    if isinstance(out, torch.Tensor):
        out = (out,)
    errors, tols, bad = {}, {}, []
    for name, got in zip(variant.outputs, out):
        want = expected[name]
        if got.shape != want.shape:
            bad.append(f"{name} shape {tuple(got.shape)}")
            continue
        if name == "dr" and got.dtype != r.dtype:
            bad.append(f"dr dtype {got.dtype}")
        tol = tolerance_for(variant, dtype, grad=name != "o", numel=want.numel())
        err, worst = relative_error(got, want), row_error(got, want)
        errors[name], tols[name] = [err, worst], tol
        if not (err <= tol and worst <= ROW_FACTOR * tol):
            bad.append(name)
    return ("ok" if not bad else "FAIL " + ",".join(bad)), errors, tols


def run_group(
    shape: MatrixShape, dtype_name: str, forms=FORMS, stems=None, seed: int = 0
) -> list[MatrixRow]:
    """Every (case, form) of `shape` in one dtype, through every variant (or the stems
    given): the reference once per (case, form), then each variant forced on it."""
    from . import device as _device
    from . import registry
    from .kernels.buffers import set_poison
    from .spec import DTYPES, FP8_WEIGHT_DTYPES, KernelSpec

    fp8_weights = dtype_name in FP8_WEIGHT_DTYPES
    dtype = DTYPES[FP8_WEIGHT_DTYPES.get(dtype_name, dtype_name)]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = _device.target(dev)
    variants = [v for v in registry.all_variants() if stems is None or v.stem in stems]
    spec = KernelSpec(
        shape.heads,
        shape.kv_heads,
        shape.head_dim,
        shape.experts,
        shape.expert_dim,
        dtype_name,
        target,
    )
    # what a variant takes at all (its targets, dtypes, head dims), at any token count:
    # forced here also where dispatch would leave small calls to another variant
    reasons = {v.stem: v.unsupported(spec) for v in variants}
    rows = []
    set_poison(True)
    try:
        for case in shape.cases():
            seen = set()
            for form in forms:
                layout = (form.r_dtype(dtype), form.q, form.weights)
                if layout in seen:
                    continue  # in float32, r in q's dtype is the float32 form again
                seen.add(layout)
                inputs = form_inputs(case, form, dtype, dev, seed)
                fp8 = None
                if fp8_weights:  # the forward on the quantised weights, against their values
                    fp8, inputs = fp8_inputs(*inputs)
                expected = reference_outputs(*inputs)
                for v in variants:
                    row = MatrixRow(
                        shape.name, case.batch, case.seqlen, form.name, dtype_name, v.stem, "n/a"
                    )
                    if reasons[v.stem] is None:
                        row.status, row.errors, row.tolerances = check_variant(
                            v, inputs, expected, dtype, fp8
                        )
                    else:
                        row.errors = {"reason": reasons[v.stem]}
                    rows.append(row)
                del expected, inputs, fp8
    finally:
        set_poison(False)
    return rows


def _run_group_in_child(args: tuple) -> list[dict]:
    shape, dtype_name, forms, stems, seed = args
    return [row.as_dict() for row in run_group(shape, dtype_name, forms, stems, seed)]


def run_matrix(
    shapes, dtypes, forms=FORMS, stems=None, jobs: int = 1, seed: int = 0, progress=None
):
    """Yield the MatrixRows of every (shape, dtype) group; `jobs` > 1 runs the groups in
    that many child processes (compiling is what takes the time, and it runs on the
    CPU: the children share the GPU). `progress(done, total, group)` after each group."""
    groups = [(shape, d) for shape in shapes for d in dtypes]
    if jobs <= 1 or len(groups) == 1:
        for i, (shape, d) in enumerate(groups):
            yield from run_group(shape, d, forms, stems, seed)
            if progress:
                progress(i + 1, len(groups), f"{shape.name} {d}")
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(groups)), mp_context=ctx) as pool:
        futures = {
            pool.submit(_run_group_in_child, (shape, d, forms, stems, seed)): f"{shape.name} {d}"
            for shape, d in groups
        }
        for i, future in enumerate(as_completed(futures)):
            for row in future.result():
                yield MatrixRow(**row)
            if progress:
                progress(i + 1, len(groups), futures[future])
