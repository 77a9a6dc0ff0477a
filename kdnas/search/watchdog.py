"""A trial's time limit (``--trial-timeout``): a trial still training past its limit is failed
with the reason and the search goes on; one that hangs (a kernel that never returns, so the
training loop cannot notice) is recorded as failed from a watchdog thread and the process
stops, since a hung thread cannot be stopped; running the same command goes on."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from kdnas.core.errors import KdnasError

HANG_FACTOR = 1.5  # a trial is hung HANG_FACTOR x its limit + HANG_GRACE seconds after start
HANG_GRACE = 60.0
HUNG_EXIT = 75  # the exit status of a process stopped by a hung trial (EX_TEMPFAIL)


class TrialTimeout(KdnasError):
    """A trial trained past its ``--trial-timeout``."""


class TrialLimit:
    """``with TrialLimit(limit, on_hang) as lim``: ``lim.check()`` (called at each training
    progress report) raises :class:`TrialTimeout` once ``limit`` seconds have passed; if the
    block has not ended HANG_FACTOR x limit + HANG_GRACE seconds after it began, ``on_hang``
    runs on a watchdog thread (it records the trial as failed) and the process exits with
    HUNG_EXIT. ``limit`` None: no limit."""

    def __init__(self, limit: float | None, on_hang: Callable[[str], None]) -> None:
        self.limit, self.on_hang = limit, on_hang
        self._done = threading.Event()
        self._t0 = time.perf_counter()

    def check(self) -> None:
        if self.limit is not None and time.perf_counter() - self._t0 > self.limit:
            raise TrialTimeout(f"still training after its limit of {self.limit:.0f} s "
                               "(--trial-timeout): failed, the search goes on")

    def _watch(self) -> None:
        wait = HANG_FACTOR * self.limit + HANG_GRACE
        if self._done.wait(wait):
            return
        reason = (f"hung: no progress {wait:.0f} s after it started (limit "
                  f"{self.limit:.0f} s, --trial-timeout)")
        try:
            self.on_hang(reason)
        finally:
            sys.stderr.write(f"kdnas: a trial {reason}. It is recorded as failed; this process "
                             "stops because a hung thread cannot be stopped. Run the same "
                             "command to go on.\n")
            sys.stderr.flush()
            os._exit(HUNG_EXIT)

    def __enter__(self) -> TrialLimit:
        self._t0 = time.perf_counter()
        if self.limit is not None:
            threading.Thread(target=self._watch, daemon=True, name="trial-watchdog").start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
