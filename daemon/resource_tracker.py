"""Stopping the ``multiprocessing`` resource tracker that spawning the ingest pool starts."""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing import resource_tracker
from typing import Any

log = logging.getLogger("crystalline.supervisor")


def stop_resource_tracker(timeout_s: float = 5.0) -> None:
    """Stop multiprocessing's resource tracker if this process started one.

    Starting a ``spawn`` process (the ingest pool) starts the tracker as a child of the
    supervisor, and nothing stops it: it only exits when it reads EOF after the supervisor is
    gone, so under systemd (``KillMode=mixed``) every stop after an ingest ended with systemd
    SIGKILLing it. No segment is ever registered with it (see ``crystalline.shm.segments``), so
    stopping it unlinks nothing; call this after the pool's processes have exited (they hold its
    pipe). The tracker exits on EOF, which a process still holding the pipe (a stray pool
    child) would keep from it forever: after ``timeout_s`` it is killed (it ignores SIGTERM).
    Uses the tracker's private ``_lock``, ``_fd`` and ``_pid`` (present in 3.11-3.13), as its
    own ``_stop()`` does, but never ``_stop()`` itself, which waits without a deadline."""
    tracker: Any = resource_tracker._resource_tracker
    with tracker._lock:
        fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
        if fd is None or pid is None:
            return
        os.close(fd)  # the tracker's EOF, once no other process holds the pipe
        tracker._fd = tracker._pid = None
    deadline = time.monotonic() + timeout_s
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() >= deadline:
                log.warning(
                    "resource tracker %d still running %g s after its pipe closed: killed", pid, timeout_s
                )
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.05)
    except ChildProcessError:  # reaped already
        pass
