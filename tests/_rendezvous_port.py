"""A rendezvous port for a test's cluster. Nothing reserves a port for another process: a port
free when the test asks can be taken (another test's daemon, an outgoing connection's local
port) before the hosting daemon binds it. That daemon then reports it (``cannot host the
rendezvous point HOST:PORT: [Errno 98] ...``, workers/cluster_member.py) and waits; ``hosted``
sees that report and starts the test's daemons again on a new port, a few times at most
(tests/daemon/_cluster_net.py's ``Machines.start_all`` for the cluster daemons; in-process
members, tests/workers/test_cluster_member.py, try again on :func:`taken_in`)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any

TRIES = 3


def free_port(address: str) -> int:
    """A port nothing listens on at ``address`` now."""
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def taken_in(error: str) -> bool:
    """``error`` (a daemon's last_error, a ClusterUnavailable) says the rendezvous port was
    taken."""
    return "cannot host the rendezvous point" in error and os.strerror(errno.EADDRINUSE) in error


def taken(status: dict[str, Any]) -> bool:
    """The hosting daemon's status says its rendezvous port was taken."""
    return taken_in(str(status.get("last_error", "")))


def hosted(
    start: Callable[[int], dict[str, Any]], stop: Callable[[], None], choose: Callable[[], int]
) -> int:
    """The port the test's cluster started on: ``start(port)`` starts its daemons on a port
    ``choose()`` gave (:func:`free_port` of an address, for one) and returns the hosting
    daemon's status once that daemon is going or :func:`taken` holds of it; while taken,
    ``stop()`` and start again on a new port, ``TRIES`` times at most."""
    for _ in range(TRIES):
        port = choose()
        status = start(port)
        if not taken(status):
            return port
        stop()
    raise AssertionError(f"the rendezvous port was taken {TRIES} times running: {status['last_error']}")
