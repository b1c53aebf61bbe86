"""A watchdog for candidates that never finish.

A GPU kernel that deadlocks (a warp-specialised kernel whose mbarrier phases never
complete) blocks the process in its next synchronisation for ever, and nothing in the
process can stop it or use the GPU again. So the tuner arms a HangGuard around each
candidate's check and timing: when they have not returned after `seconds`, the guard's
thread records the candidate as failed with stage 'hang' (in the study, so a resumed
search never asks it again, and in the tuning database), says so on stderr and ends the
process (exit status HANG_EXIT). Running the same command again resumes the search
without it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

from .outcome import Failure

#: the exit status of a tuning process that a hung candidate ended
HANG_EXIT = 3
#: seconds a candidate's check and timing may take together before it counts as hung
DEFAULT_HANG_S = 300.0


class Hung(RuntimeError):
    """A guarded block returned after its guard fired (only where `exit` did not end the
    process, as in tests): the candidate is recorded as hung already."""


class HangGuard:
    """Context manager: runs `record(failure)` and then `exit(HANG_EXIT)` from a timer
    thread if the block has not finished within `seconds` (None: no guard). `what` names
    the candidate in the message."""

    def __init__(
        self,
        seconds: float | None,
        what: str,
        record: Callable[[Failure], None],
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.seconds, self.what, self.record, self.exit = seconds, what, record, exit
        self.fired = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._done = False

    def failure(self) -> Failure:
        return Failure(
            "hang",
            f"no result within {self.seconds:g} s (a kernel that never finishes, such as "
            "an mbarrier deadlock)",
        )

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
        try:
            self.record(self.failure())
        finally:
            print(
                f"mhfgen tune: {self.what} gave no result within {self.seconds:g} s; it is "
                "recorded as failed (stage 'hang'), and this process cannot use the GPU "
                "again, so it ends here. Run the same command again to resume without it.",
                file=sys.stderr,
                flush=True,
            )
            self.exit(HANG_EXIT)

    def __enter__(self) -> HangGuard:
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if self.fired:
            raise Hung(self.what)
