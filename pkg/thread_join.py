"""Joining a thread, or taking a lock, within a time that may shrink while it waits: the daemon's
stop budget's clock (``daemon/stop_budget.py``: a second signal cuts it), or a fixed one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

JOIN_SLICE_S = 0.05  # how often a join asks its clock whether the time was cut


def within(cap_s: float) -> Callable[[], float]:
    """A clock of ``cap_s`` from now (for a join outside the daemon's stop)."""
    until = time.monotonic() + cap_s
    return lambda: max(0.0, until - time.monotonic())


def join_within(thread: threading.Thread | None, left: Callable[[], float]) -> bool:
    """Wait for ``thread`` to end while ``left()`` gives time, asking it every ``JOIN_SLICE_S``;
    True when it has ended (or there was none)."""
    while thread is not None and thread.is_alive():
        remaining = left()
        if remaining <= 0:
            return False
        thread.join(min(remaining, JOIN_SLICE_S))
    return True


def acquire_within(lock: threading.Lock, left: Callable[[], float]) -> bool:
    """Take ``lock`` while ``left()`` gives time, asking it every ``JOIN_SLICE_S``; True when
    taken (the caller releases it)."""
    while (remaining := left()) > 0:
        if lock.acquire(timeout=min(remaining, JOIN_SLICE_S)):
            return True
    return lock.acquire(blocking=False)
