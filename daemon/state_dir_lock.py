"""The state directory's lock: one daemon per state directory. The supervisor holds it from its
start to its end (an ``flock`` on ``daemon.lock``, released by the kernel when the process dies,
however it dies); its children do not inherit it (they are started with their descriptors
closed), so whoever else takes it knows that no supervisor of this state directory is alive."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import TextIO

LOCK_NAME = "daemon.lock"
RETRY_S = 0.05  # between tries while the lock is held


def take_lock(state_dir: Path, wait_s: float = 0.0) -> TextIO | None:
    """The lock of ``state_dir`` (held until the file is closed), tried until ``wait_s`` has
    passed (once, by default), or None while another process holds it."""
    lock = (state_dir / LOCK_NAME).open("a+", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                return None
        time.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
