"""What evaluating one candidate can end in: the Candidate itself and its Failure."""

from __future__ import annotations

from dataclasses import dataclass

#: failure stages, in the order a candidate meets them
STAGES = (
    "pruned",
    "compile",
    "resources",
    "timeout",
    "crash",
    "wrong answer",
    "error",
    "interrupted",
)


@dataclass(frozen=True)
class Candidate:
    """One config of one kernel variant (`kernel`: its stem)."""

    kernel: str
    config: object  # the variant's config


@dataclass(frozen=True)
class Failure:
    """Why a candidate has no time: stage is one of STAGES; reason is one line."""

    stage: str
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.reason}"


def classify(exc: BaseException) -> Failure:
    """A Failure for an exception raised while compiling or launching a candidate."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    if isinstance(exc, OutOfResources):
        return Failure("resources", text)
    if isinstance(exc, CompilationError):
        return Failure("compile", text)
    return Failure("error", f"{type(exc).__name__}: {text}")
