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
from pathlib import Path
from typing import Any

MAX_REPLY = 16 * 1024 * 1024


def request(path: Path, payload: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request and read its reply; OSError (ConnectionError, TimeoutError) when the
    daemon is unreachable, closes early or sends something that is not a reply object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)  # every connect, send and recv below: never hangs on a dead daemon
        sock.connect(str(path))
        # a refusal (too many connections) is written before the server closes, unread: the
        # send may fail, the refusal is read below
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks: list[bytes] = []
        size = 0
        while True:
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
    if not isinstance(reply, dict):
        raise ConnectionError(f"{path}: malformed reply")
    return reply
