"""The status socket of a real daemon under a burst of concurrent clients, slow clients that
never read or write, garbage and oversized lines: every well-formed request is answered, the
daemon keeps training, and the supervisor's memory stays bounded."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from fault_harness import Daemon, drop, rss_kib, short_tmp

from crystalline.daemon.status_server import MAX_LINE

BURST = 300
SLOW = 100
RSS_BOUND_KIB = 64 * 1024  # a burst may warm caches; it must not keep per-client buffers


def _exchange(path: Path, payload: bytes, timeout_s: float = 120.0) -> dict[str, Any] | None:
    """Send ``payload``, read one reply line; None when the server closed without a reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        # the server may give up on an oversized request before it is all sent
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except ConnectionResetError:
            pass
    if not buf:
        return None
    reply = json.loads(buf)
    assert isinstance(reply, dict)
    return reply


def _burst(path: Path, payloads: list[bytes]) -> list[dict[str, Any] | BaseException | None]:
    """All payloads at once, one connection each, released together by a barrier."""
    results: list[dict[str, Any] | BaseException | None] = [None] * len(payloads)
    gate = threading.Barrier(len(payloads))

    def one(i: int) -> None:
        try:
            gate.wait(60)
            results[i] = _exchange(path, payloads[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_status_socket_survives_burst_slow_garbage_and_oversized_clients() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=2)
        drop(d.inbox, [f"doc{i}.txt" for i in range(4)])
        d.start()
        slow: list[socket.socket] = []
        try:
            d.wait_step(2)
            assert d.proc is not None
            for _ in range(20):  # warm up: the first replies allocate what every reply needs
                d.status()
            rss_before = rss_kib(d.proc.pid)

            # slow clients: connected, never write (or write half a request), never read
            for i in range(SLOW):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(d.socket))
                if i % 2:
                    s.sendall(b'{"cmd": "sta')
                slow.append(s)

            status = b'{"cmd": "status"}\n'
            garbage = [
                b"\x00\xff garbage\n",
                b"[1, 2, 3]\n",
                b'{"cmd": 42}\n',
                b"{not json\n",
                b'{"cmd": "x"}\n',
            ]
            oversized = b'{"cmd": "status", "pad": "' + b"x" * (MAX_LINE * 4) + b'"}\n'
            payloads = [status] * BURST + garbage * 10 + [oversized] * 10
            results = _burst(d.socket, payloads)

            good = results[:BURST]
            failures = [r for r in good if not (isinstance(r, dict) and r.get("ok") is True)]
            assert failures == [], failures[:5]
            assert all(isinstance(r, dict) and r["data"]["pid"] == d.proc.pid for r in good)
            bad = results[BURST : BURST + len(garbage) * 10]
            assert all(isinstance(r, dict) and r["ok"] is False and r["error"] for r in bad), bad[:5]
            huge = results[BURST + len(garbage) * 10 :]
            # an oversized line is refused (with an error reply, or by closing), never executed
            assert all(r is None or (isinstance(r, dict) and r["ok"] is False) for r in huge), huge
            assert any(isinstance(r, dict) and "longer than" in r["error"] for r in huge), huge

            # a second burst, with the slow clients still hanging on: still every one answered
            again = _burst(d.socket, [status] * BURST)
            assert all(isinstance(r, dict) and r.get("ok") is True for r in again)

            data = d.wait_step(d.status()["training"]["step"])  # training went on throughout
            assert data["state"] == "running"
            rss_after = rss_kib(d.proc.pid)
            assert rss_after - rss_before < RSS_BOUND_KIB, (rss_before, rss_after)
            assert len(os.listdir(f"/proc/{d.proc.pid}/fd")) < 200 + SLOW  # no descriptor per past client
            assert d.stop() == 0
        finally:
            for s in slow:
                s.close()
            d.close()
