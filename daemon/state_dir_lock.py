"""The state directory's lock: one daemon per state directory. The supervisor holds it from its
start to its end (an ``flock`` on ``daemon.lock``, released by the kernel when the process dies,
however it dies), and so does control, which inherits its descriptor (``pass_fds``; its other
children start with their descriptors closed): an flock belongs to the open file description,
so it is held until the last process holding a descriptor of it exits or closes it. Whoever
else takes it knows that neither a supervisor of this state directory nor a control of one
(writing its final checkpoint after its supervisor was killed) is alive. A clean stop frees it:
control exits first, then the supervisor closes its own."""

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
