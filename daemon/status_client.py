"""The client side of the status socket: send one JSON line, read one JSON line back.

Standard library only (socket and json), and no asyncio: `crystalline status` imports this and
nothing of the daemon's machinery, so it answers in tens of milliseconds even on a machine
whose cores are all training (issue 19: importing numpy, aiohttp and the crawler first cost
2-11 s there).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

MAX_REPLY = 16 * 1024 * 1024


def request(path: Path, payload: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request and read its reply within ``timeout_s`` in all (connect, send and every
    read: a daemon that trickles its reply a byte at a time cannot hold the client past it);
    OSError (ConnectionError, TimeoutError) when the daemon is unreachable, closes early, is not
    done in time or sends something that is not a reply object."""
    deadline = time.monotonic() + timeout_s
    try:
        return _request(path, payload, deadline)
    except TimeoutError:
        raise TimeoutError(f"{path}: the daemon did not reply within {timeout_s:g} s (--timeout)") from None


def _request(path: Path, payload: dict[str, Any], deadline: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _time_left(sock, deadline)
        sock.connect(str(path))
        _time_left(sock, deadline)
        # a refusal (too many connections) is written before the server closes, unread: the
        # send may fail, the refusal is read below
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks: list[bytes] = []
        size = 0
        while True:
            _time_left(sock, deadline)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{path}: the daemon closed the connection without a reply")
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n"):
                break
            if size > MAX_REPLY:
                raise ConnectionError(f"{path}: reply longer than {MAX_REPLY} bytes")
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ConnectionError(f"{path}: the reply is not JSON") from None
    except RecursionError:
        raise ConnectionError(f"{path}: the reply is nested too deep to read") from None
    if not isinstance(reply, dict):
        raise ConnectionError(f"{path}: malformed reply")
    return reply


def _time_left(sock: socket.socket, deadline: float) -> None:
    """Bound the socket's next operation by what is left until ``deadline`` (TimeoutError past it)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)
