"""The tests' one way to wait: ask again until something holds or a deadline passes, then fail
saying what was awaited and what was last seen. ``until`` for anything; ``until_status`` for a
daemon's (or machine's) status, whose socket may not listen yet, each request bounded by the
time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

PROBE_S = 30.0  # the longest one status request may take (a loaded daemon answers late)
LAST_PROBE_S = 0.5  # what the last request gets, however little time is left


def until(
    probe: Callable[[], T | None], what: str | Callable[[], str], timeout_s: float, interval_s: float = 0.2
) -> T:
    """What ``probe()`` returns once that is true (not None, False, 0 or empty), asked every
    ``interval_s``; an exception it raises (a process that died) ends the wait. After
    ``timeout_s`` an AssertionError with ``what`` (a callable is called then, to show the last
    state seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said} (not within {timeout_s:.0f} s)")
        time.sleep(interval_s)


def until_status(
    status: Callable[[float], dict[str, Any]],
    ok: Callable[[dict[str, Any]], Any],
    what: str,
    timeout_s: float,
    interval_s: float = 0.2,
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
