"""The tests' one way to wait: ask again until something holds or a deadline passes, then fail
saying what was awaited and what was last seen. ``until`` for anything; ``until_status`` for a
daemon's (or machine's) status, whose socket may not listen yet."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


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
    status: Callable[[], dict[str, Any]],
    ok: Callable[[dict[str, Any]], Any],
    what: str,
    timeout_s: float,
    interval_s: float = 0.2,
    show: Callable[[dict[str, Any]], Any] = lambda data: data,
) -> dict[str, Any]:
    """``status()`` once ``ok`` holds of it, asked every ``interval_s``; an OSError from it (the
    socket not listening yet) is a try that failed. After ``timeout_s`` an AssertionError with
    ``what`` and ``show`` of the last status seen."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        try:
            last = status()
        except OSError:
            return None  # not listening yet
        return last if ok(last) else None

    return until(probe, lambda: f"{what}: {show(last)}", timeout_s, interval_s)
