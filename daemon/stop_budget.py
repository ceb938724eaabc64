"""The daemon's stop budget: one deadline that the stop's waits take from, inside the unit's
``TimeoutStopSec=60``, and a second signal that cuts them short.

The components' stops (control's final checkpoint and exit, the crawl, ingest, the vocabulary)
end by ``STOP_S`` after the first signal; every wait of the cleanup after them (control's
runner, the batch ring's threads, ingest's close, the dashboard, the generation process, the
resource tracker, the status socket) takes from what is left until ``END_S``, each within its
own cap. A second signal moves the deadline to ``HURRIED_S`` from then, and a wait in progress
then ends at once (:meth:`StopBudget.wait` races it against the signal; a wait in a thread asks
:meth:`StopBudget.clock`), so that every wait after it gets at most that. Only a wait whose end
loses nothing is cut so: the batch store of a batch in hand is never cut (README "Stopping")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

STOP_S = 35.0  # control, the crawl, ingest and the vocabulary have stopped (or were given up on)
END_S = 52.0  # the cleanup's waits end; the process exits well inside TimeoutStopSec=60
HURRIED_S = 5.0  # after a second signal, what is left of every wait


class StopBudget:
    def __init__(self, stop_s: float = STOP_S, end_s: float = END_S) -> None:
        self.stop_s = stop_s
        self.end_s = end_s
        self.started = time.monotonic()
        self.hurried = asyncio.Event()
        self._cut_at: float | None = None

    def start(self) -> None:
        """The stop begins now (the first signal, or the ``stop`` command)."""
        self.started = time.monotonic()

    def hurry(self) -> None:
        """A second signal: no wait goes on past ``HURRIED_S`` from now."""
        self._cut_at = time.monotonic() + HURRIED_S
        self.hurried.set()

    def _deadline(self, end_s: float) -> float:
        deadline = self.started + end_s
        return deadline if self._cut_at is None else min(deadline, self._cut_at)

    def left(self, cap_s: float, reserve_s: float = 0.0, cleanup: bool = False) -> float:
        """What a wait of at most ``cap_s`` may take now, keeping ``reserve_s`` for what must
        follow it (0 when the budget is spent); ``cleanup``: a wait after the components' stops,
        which takes from ``END_S`` rather than ``STOP_S``."""
        deadline = self._deadline(self.end_s if cleanup else self.stop_s)
        return max(0.0, min(cap_s, deadline - reserve_s - time.monotonic()))

    def clock(self, cap_s: float) -> Callable[[], float]:
        """For a cleanup wait in a thread, which asks it as it waits (thread-safe): the time
        that wait has left, at most ``cap_s`` from now and not past ``END_S``; 0 as soon as a
        second signal comes after it began (it is cut, as :meth:`wait` cuts), at most what is
        left of ``HURRIED_S`` when it began after one."""
        until = time.monotonic() + cap_s
        began_hurried = self._cut_at is not None

        def left() -> float:
            if not began_hurried and self._cut_at is not None:
                return 0.0
            return max(0.0, min(until, self._deadline(self.end_s)) - time.monotonic())

        return left

    async def wait(self, aw: Awaitable[Any], timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for ``aw`` (a task or future, which the wait never cancels),
        and no longer once a second signal came: True when it ended (its exception re-raised)."""
        fut = asyncio.ensure_future(aw)
        until = time.monotonic() + timeout_s
        # a wait that began after the second signal has its short timeout already
        hurried = None if self.hurried.is_set() else asyncio.ensure_future(self.hurried.wait())
        try:
            while not fut.done():
                left = until - time.monotonic()
                if left <= 0 or (hurried is not None and hurried.done()):
                    return False
                racing = {fut} if hurried is None else {fut, hurried}
                await asyncio.wait(racing, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if hurried is not None:
                hurried.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hurried
        fut.result()
        return True
