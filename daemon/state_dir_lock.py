"""The state directory's lock: one daemon per state directory. The supervisor holds it from its
start to its end (an ``flock`` on ``daemon.lock``, released by the kernel when the process dies,
however it dies); its children do not inherit it (they are started with their descriptors
closed), so whoever else takes it knows that no supervisor of this state directory is alive."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import TextIO

LOCK_NAME = "daemon.lock"


def take_lock(state_dir: Path) -> TextIO | None:
    """The lock of ``state_dir``, taken without waiting (held until the file is closed), or None
    while another process holds it."""
    lock = (state_dir / LOCK_NAME).open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
