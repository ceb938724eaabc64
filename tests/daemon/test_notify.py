"""sd_notify over a datagram socket of the test's own."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from crystalline.daemon.notify import Notifier


def test_messages_reach_the_notify_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="cnt-", dir="/tmp") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval() == 2.0
        assert n.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        assert n.status("two\nlines")
        assert sock.recv(4096) == b"STATUS=two lines"
        assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
        assert n.stopping() and sock.recv(4096) == b"STOPPING=1"
        n.close()
        sock.close()


def test_abstract_socket_address() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"crystalline-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert n.ready() and sock.recv(4096) == b"READY=1"
    sock.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval() is None
    assert n.ready() is False


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval() is None
