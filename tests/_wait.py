"""The tests' one way to wait: ask again until something holds or a deadline passes, then fail
saying what was awaited and what was last seen. ``until`` for anything (``until_async`` in an
event loop); ``until_status`` for a daemon's (or machine's) status, whose socket may not listen
yet, each request bounded by the time left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

PROBE_S = 30.0  # the longest one status request may take (a loaded daemon answers late)
LAST_PROBE_S = 0.5  # what the last request gets, however little time is left
# how often a status is asked for: a request costs the daemon and the test under a millisecond
# of CPU (measured: 100 requests, 0.07 s in all), and each wait overshoots by half of this
STATUS_EVERY_S = 0.1


def _tries(what: str | Callable[[], str], timeout_s: float, interval_s: float) -> Iterator[float]:
    """The pause before each try (none before the first) until ``timeout_s`` has passed; then
    the AssertionError with ``what`` (a callable is called then, to show the last state seen)."""
    deadline = time.monotonic() + timeout_s
    yield 0.0
    while time.monotonic() < deadline:
        yield interval_s
    said = what() if callable(what) else what
    raise AssertionError(f"{said} (not within {timeout_s:.0f} s)")


def until(
    probe: Callable[[], T | None],
    what: str | Callable[[], str],
    timeout_s: float,
    interval_s: float = 0.2,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """What ``probe()`` returns once that is true (not None, False, 0 or empty), asked every
    ``interval_s`` (``pause``: how to wait between tries, a browser page's own wait for one);
    an exception it raises (a process that died) ends the wait. After ``timeout_s`` an
    AssertionError with ``what`` (a callable is called then, to show the last state seen)."""
    for wait in _tries(what, timeout_s, interval_s):
        if wait:
            pause(wait)
        value = probe()
        if value:
            return value
    raise AssertionError("unreachable: _tries ends by raising")


async def until_async(
    probe: Callable[[], T | None], what: str | Callable[[], str], timeout_s: float, interval_s: float = 0.05
) -> T:
    """:func:`until` inside an event loop: the pauses are ``asyncio.sleep``, so the loop's other
    tasks run between the tries."""
    for wait in _tries(what, timeout_s, interval_s):
        if wait:
            await asyncio.sleep(wait)
        value = probe()
        if value:
            return value
    raise AssertionError("unreachable: _tries ends by raising")


def until_status(
    status: Callable[[float], dict[str, Any]],
    ok: Callable[[dict[str, Any]], Any],
    what: str,
    timeout_s: float,
    interval_s: float = STATUS_EVERY_S,
    show: Callable[[dict[str, Any]], Any] = lambda data: data,
) -> dict[str, Any]:
    """``status(seconds)`` once ``ok`` holds of it, asked every ``interval_s``; ``seconds`` is
    what its request may take: the time left, at most ``PROBE_S`` (and at least
    ``LAST_PROBE_S``), so a daemon that does not answer cannot hold the wait past its deadline.
    An OSError from it (the socket not listening yet, no answer in time) is a try that failed.
    After ``timeout_s`` an AssertionError with ``what`` and ``show`` of the last status seen
    (``{}`` when none was)."""
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s

    def probe() -> dict[str, Any] | None:
        nonlocal last
        left = deadline - time.monotonic()
        try:
            last = status(min(PROBE_S, max(left, LAST_PROBE_S)))
        except OSError:
            return None  # not listening yet, or no answer in the time left
        return last if ok(last) else None

    return until(probe, lambda: f"{what}: {show(last)}", timeout_s, interval_s)
