"""Another uid holding the status socket's connections open: a child forked from the test,
turned into ``nobody`` with setuid, reporting what it saw as JSON lines on a pipe."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO

NOBODY = 65534
REFUSALS_WITHIN_S = 60.0  # the child's wait for the refusals it expects (a slow server's)


def _hold(path: Path, count: int, refusals: int, hold_s: float, report: int, release: int) -> None:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        socks.append(s)
    # what the server said to each: wait for the ``refusals`` expected (the server may be slow to
    # write them under load), never for a fixed window; the rest is what it keeps
    said: dict[int, bytes] = {}
    end = time.monotonic() + REFUSALS_WITHIN_S
    while True:
        for i, s in enumerate(socks):
            if i not in said:
                with contextlib.suppress(BlockingIOError):
                    said[i] = s.recv(4096, socket.MSG_DONTWAIT)
        if len(said) >= refusals or time.monotonic() > end:
            break
        select.select([s for i, s in enumerate(socks) if i not in said], [], [], 0.1)
    held = [s for i, s in enumerate(socks) if i not in said]  # nothing said: the server keeps it
    refused = sum(b"too many connections" in data for data in said.values())
    reasons = {json.loads(data.splitlines()[0]).get("error", "") for data in said.values() if data}
    first = {"held": len(held), "refused": refused, "reasons": sorted(reasons)}
    os.write(report, (json.dumps(first) + "\n").encode())
    closed: set[int] = set()
    end = time.monotonic() + hold_s
    # a keep-alive newline on each, every 0.1 s, until the end or the test's release
    while time.monotonic() < end and not select.select([release], [], [], 0)[0]:
        for i, s in enumerate(held):
            if i in closed:
                continue
            try:
                s.send(b"\n")
                if s.recv(4096, socket.MSG_DONTWAIT) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
        time.sleep(0.1)
    os.write(report, (json.dumps({"closed": len(closed)}) + "\n").encode())


class HostileUser:
    """``nobody`` opening ``count`` connections to ``path`` and keeping them alive with newlines
    for ``hold_s``, or until ``release()``. ``first()``: how many the server kept and refused (and
    the refusals' distinct ``reasons``), once ``refusals`` connections were answered (or after
    ``REFUSALS_WITHIN_S``: a server that refuses too few is then seen keeping too many; extra
    refusals that come after the expected ones may be missed here, and show in ``last()``'s count
    and the server's ``idle_closed``); ``last()``:
    how many of those kept it had closed by the end. Needs root (setuid)."""

    def __init__(self, path: Path, count: int, hold_s: float, refusals: int) -> None:
        r, w = os.pipe()
        release_r, self._release = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child must never return into pytest
            code = 1
            try:
                os.close(r)
                os.close(self._release)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                _hold(path, count, refusals, hold_s, w, release_r)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        os.close(release_r)
        self.pid = pid
        self.pipe: BinaryIO = os.fdopen(r, "rb")
        self.released = False

    def release(self) -> None:
        """End the hold now (before ``hold_s``): the child reports ``last()`` and exits."""
        if not self.released:
            self.released = True
            with contextlib.suppress(BrokenPipeError):  # the child is gone already
                os.write(self._release, b"x")

    def _line(self) -> dict[str, Any]:
        line = self.pipe.readline()
        assert line, "the hostile child died before reporting"
        report: dict[str, Any] = json.loads(line)
        return report

    def first(self) -> dict[str, Any]:
        return self._line()

    def last(self) -> dict[str, Any]:
        return self._line()

    def wait(self, timeout_s: float = 30.0) -> int:
        """The child's exit code; SIGKILL when it has not exited within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._close()
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        self._close()
        return -9

    def _close(self) -> None:
        self.pipe.close()
        os.close(self._release)
