"""The Helion peer of `mhfgen bench`: a FlashMHF forward written in Helion, after Helion's
own autotuner, timed beside mhfgen's forward.

Helion (PyTorch's autotuning kernel DSL) is not a dependency of mhfgen: `available()` says
whether it imports here, and the kernel (mhfgen.peers.helion_kernel) is imported only when
a Helion row is built. The autotuner runs once per (shape, dtype, settings) in a process,
on the first call (the benchmark's warm-up, which is not timed); `TUNINGS` records how long
it took and the config it chose. `configure()` sets the effort and the time budget that
`mhfgen bench --helion-effort/--helion-budget` pass.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

#: Helion's autotune efforts: 'none' runs Helion's default config without a search
EFFORTS = ("none", "quick", "full")
INSTALL_HINT = "pip install helion==1.4.0, the extra mhfgen[helion]; it needs a CUDA build of torch"


@dataclass(frozen=True)
class AutotuneSettings:
    """effort: Helion's autotune_effort; budget_s: its autotune_budget_seconds, the time
    after which the search returns its best config so far (it may overrun by a few
    seconds: a running compile is not interrupted)."""

    effort: str = "quick"
    budget_s: int = 120

    def __post_init__(self) -> None:
        if self.effort not in EFFORTS:
            raise ValueError(
                f"Helion autotune effort must be one of {', '.join(EFFORTS)}, got {self.effort!r}"
            )
        if (
            not isinstance(self.budget_s, int)
            or isinstance(self.budget_s, bool)
            or self.budget_s < 1
        ):
            raise ValueError(
                f"Helion autotune budget must be a positive number of seconds, "
                f"got {self.budget_s!r}"
            )


@dataclass(frozen=True)
class Tuning:
    """One autotuner run: the problem's sizes and dtype, the settings, its wall time in
    seconds and the config Helion chose (its repr; None for effort 'none')."""

    shape: tuple
    dtype: str
    settings: AutotuneSettings
    seconds: float
    config: str | None


SETTINGS = AutotuneSettings()
TUNINGS: list[Tuning] = []
_kernels: dict[tuple, object] = {}
_tuned: set[tuple] = set()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def available() -> str | None:
    """None when the Helion peer can run here (Helion imports and a CUDA GPU is visible),
    else the reason, one line. Without a GPU the method is left out even where Helion is
    installed: its autotuner times candidates on the device, and through Triton's
    interpreter a search would take hours for nothing."""
    try:
        found = importlib.util.find_spec("helion") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"the helion package is not installed ({INSTALL_HINT})"
    try:
        import helion  # noqa: F401
    except Exception as exc:  # NOTE: a broken install reads as not installed, with its reason
        return f"helion does not import: {type(exc).__name__}: {exc}"[:300]
    if not _has_cuda():
        return "the helion method needs a CUDA GPU (Helion's autotuner times its candidates there)"
    return None


def configure(settings: AutotuneSettings) -> None:
    """Use `settings` for the Helion kernels built from now on."""
    global SETTINGS
    SETTINGS = settings


def _kernel(ieee: bool):
    key = (SETTINGS, ieee)
    kernel = _kernels.get(key)
    if kernel is None:
        from . import helion_kernel

        kernel = _kernels[key] = helion_kernel.make_kernel(SETTINGS.effort, SETTINGS.budget_s, ieee)
    return kernel


def flash_mhf_fwd(q, k, u, v, r):
    """o = FlashMHF(q, k, u, v, r) through the Helion kernel (shapes as mhfgen.flash_mhf's;
    forward only, no autograd). The first call for a (shape, dtype) runs the autotuner."""
    import torch

    ieee = q.dtype == torch.float32
    kernel = _kernel(ieee)
    key = (SETTINGS, ieee, tuple(q.shape), tuple(k.shape), q.dtype, r.dtype)
    if key not in _tuned and SETTINGS.effort != "none":
        start = time.perf_counter()
        config = kernel.autotune((q, k, u, v, r), force=True)
        TUNINGS.append(
            Tuning(
                (tuple(q.shape), tuple(k.shape)),
                str(q.dtype).replace("torch.", ""),
                SETTINGS,
                time.perf_counter() - start,
                repr(config),
            )
        )
    _tuned.add(key)
    return kernel(q, k, u, v, r)


def describe_tunings() -> list[str]:
    """One line per autotuner run of this process."""
    return [
        f"helion autotune (effort {t.settings.effort}, budget {t.settings.budget_s} s) of "
        f"q {t.shape[0]} k {t.shape[1]} {t.dtype}: {t.seconds:.0f} s, config {t.config}"
        for t in TUNINGS
    ]
