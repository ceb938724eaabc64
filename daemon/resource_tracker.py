"""Stopping the ``multiprocessing`` resource tracker that spawning the ingest pool starts."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from multiprocessing import resource_tracker
from typing import Any

from ..thread_join import within

log = logging.getLogger("crystalline.supervisor")

TIMEOUT_S = 5.0  # how long the tracker has, unless the caller says
REAP_S = 0.5  # of that, what is kept to reap it once killed


def stop_resource_tracker(left: Callable[[], float] | None = None) -> None:
    """Stop multiprocessing's resource tracker if this process started one.

    Starting a ``spawn`` process (the ingest pool) starts the tracker as a child of the
    supervisor, and nothing stops it: it only exits when it reads EOF after the supervisor is
    gone, so under systemd (``KillMode=mixed``) every stop after an ingest ended with systemd
    SIGKILLing it. No segment is ever registered with it (see ``crystalline.shm.segments``), so
    stopping it unlinks nothing; call this after the pool's processes have exited (they hold its
    pipe). The tracker exits on EOF, which a process still holding the pipe (a stray pool
    child) would keep from it forever: it is killed (it ignores SIGTERM) once ``left()`` (the
    daemon's stop budget's clock, which a second signal cuts; ``TIMEOUT_S`` by default) is
    down to ``REAP_S``, and reaped in what is left (else the process's exit leaves it to init).
    Uses the tracker's private ``_lock``, ``_fd`` and ``_pid`` (present in 3.11-3.13), as its
    own ``_stop()`` does, but never ``_stop()`` itself, which waits without a deadline. On a
    Python without them: one warning, and the tracker is left to end with this process (its
    pipe closes then: under systemd it may be killed at the stop's end, as before this)."""
    try:
        pid = _close_pipe()
    except AttributeError as exc:
        log.warning(
            "resource tracker not stopped: %s (read for Python 3.11-3.13); it ends with this process", exc
        )
        return
    if pid is None:
        return
    left = left or within(TIMEOUT_S)
    killed = False
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            remaining = left()
            if not killed and remaining <= REAP_S:
                log.warning("resource tracker %d still running after its pipe closed: killed", pid)
                os.kill(pid, signal.SIGKILL)
                killed = True
            elif remaining <= 0:
                log.warning("resource tracker %d killed and not reaped in the stop's time", pid)
                return
            time.sleep(min(0.05, max(remaining, 0.001)))
    except ChildProcessError:  # reaped already
        pass


def _close_pipe() -> int | None:
    """Close this process's end of the tracker's pipe and forget it, as its ``_stop()`` does:
    the tracker's pid, or None when none runs. AttributeError on a Python whose tracker keeps
    them under other names (then nothing is closed)."""
    tracker: Any = resource_tracker._resource_tracker
    with tracker._lock:
        fd, pid = tracker._fd, tracker._pid
        if fd is None or pid is None:
            return None
        os.close(fd)  # the tracker's EOF, once no other process holds the pipe
        tracker._fd = tracker._pid = None
    return int(pid)
