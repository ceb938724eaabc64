"""A TERM to the test run (a CI runner's stop, ``timeout``) ends it as a Ctrl-C does: pytest's
teardown runs, so the daemons the fixtures started in sessions of their own are stopped, not left
to init. pytest has no TERM handler of its own: killed at once, it ran no teardown at all.

A second TERM ends the run at once (the default), and a process forked from the run (it inherits
the handler) is ended by a TERM as if it had none."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import pytest

_RUN_PID = os.getpid()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: the next TERM ends the process
    if os.getpid() != _RUN_PID:  # a fork of the run: ended as without this handler
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    """The hook (tests/conftest.py imports it): TERM raises KeyboardInterrupt in the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
