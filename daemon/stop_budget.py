"""The daemon's stop budget: one deadline that the stop's waits take from, inside the unit's
``TimeoutStopSec=60``, and a second signal that cuts them short.

The components' stops (control's final checkpoint and exit, the crawl, ingest, the vocabulary)
end by ``STOP_S`` after the first signal; every wait of the cleanup after them (control's
runner, the batch ring's threads, ingest's close, the dashboard, the generation process, the
resource tracker, the dashboard's history's save, the status socket) takes from what is left
until ``END_S``, each within its own cap. A second signal moves the deadline to ``HURRIED_S``
from then, and a wait in progress then ends at once (:meth:`StopBudget.wait` races it against
the signal; a wait in a thread asks :meth:`StopBudget.clock`), so that every wait after it
gets at most that. Only a wait whose end
loses nothing is cut so. The wait for the threads the stop left running (:meth:`StopBudget.exit_left`)
ends ``HURRIED_S`` after a second signal as well, even while ingest's batch is still storing the
documents it has: the process exits without it, which loses nothing, as at ``EXIT_S`` (below).

The worst case, from the constants: the components by ``STOP_S`` (35 s); the cleanup's waits by
``END_S`` (52 s; their caps add up to more than the 17 s left, so ``END_S`` binds), and aiohttp's
close, which takes ``dashboard.CLOSE_S`` (1 s) at most and is never cut before
``dashboard.CUT_S`` (2 s: twice that, derived from it, so that its ordinary end is never taken
for an overrun) and cut there past it (the listening socket closed, its connections aborted:
``dashboard._cleanup_within``): the stop's own steps end by 54 s.
What they left running in threads the interpreter's exit would wait for without a deadline (the
loop's: ingest's batch storing what it has, then closing its pool, drop folder and registry; a
vocabulary pass; and any other loop's, such as the crawl's WARC append or spool put) is waited
for until ``EXIT_S`` (57 s) and then the process exits without it (:func:`wait_for_threads`;
the supervisor's ``_stop``): that
loses nothing, as a SIGKILL would not (the token store is durable before the registry's rows and
the next start's ``recover()`` records what they lack, a claimed file is claimed again, a spool
entry stays until its record, an open transaction is rolled back). So the process ends by 57 s
and the exit's own work, inside ``TimeoutStopSec=60`` (tests/daemon/test_stop_budget.py sums
it from these constants and the unit file)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import thread as futures_thread
from typing import Any

from ..thread_join import JOIN_SLICE_S

STOP_S = 35.0  # control, the crawl, ingest and the vocabulary have stopped (or were given up on)
END_S = 52.0  # the cleanup's waits end (aiohttp's close may take 2 s past it, then is cut)
EXIT_S = 57.0  # the threads the stop left running are given up on: the process exits
HURRIED_S = 5.0  # after a second signal, what is left of every wait

log = logging.getLogger("crystalline.supervisor")
_registry_missing_logged = False  # _executor_workers' one line, at its first use


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

    def exit_left(self) -> float:
        """What is left until ``EXIT_S`` (less after a second signal: ``HURRIED_S`` from it)."""
        return max(0.0, self._deadline(EXIT_S) - time.monotonic())

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


def exit_joins() -> list[threading.Thread]:
    """The threads the interpreter's exit joins with no deadline, but this one and the main
    one: each non-daemon thread (``threading._shutdown``), and each worker of every thread pool
    executor, daemon or not (``concurrent.futures``' exit hook joins them all: a worker started
    from the crawl's daemon thread is a daemon thread too): this loop's, idle ones ending at
    once once it is shut down and busy ones after their work, and another thread's loop's (the
    crawl's WARC append or spool put)."""
    this, main = threading.current_thread(), threading.main_thread()
    workers = _executor_workers()
    return [
        t for t in threading.enumerate() if (not t.daemon or t in workers) and t is not this and t is not main
    ]


def _executor_workers() -> set[threading.Thread]:
    """What concurrent.futures' exit joins (private API: its registry, a WeakKeyDictionary that
    another loop may add a worker to meanwhile), copied under the lock it is added under, as its
    own exit hook copies it. On a Python without them (3.11 has them; later ones are not checked
    here): none, logged once, so that only the non-daemon threads are waited for (this loop's
    executor's among them, not a daemon thread's loop's), never an exception in the stop's last
    step."""
    global _registry_missing_logged
    try:
        with futures_thread._global_shutdown_lock:
            return set(futures_thread._threads_queues)
    except (AttributeError, TypeError) as exc:
        if not _registry_missing_logged:
            _registry_missing_logged = True
            log.warning(
                "stop: concurrent.futures' registry of workers not read (%s); waiting for the "
                "non-daemon threads only", exc,
            )  # fmt: skip
        return set()


async def wait_for_threads(left: Callable[[], float]) -> list[str]:
    """Wait, without blocking the loop, while ``left()`` gives time, for every thread the
    interpreter's exit would join with no deadline (:func:`exit_joins`); the names of those
    still running when it ran out."""

    def running() -> list[str]:
        return [t.name for t in exit_joins() if t.is_alive()]

    while (names := running()) and left() > 0:
        await asyncio.sleep(JOIN_SLICE_S)
    return names
