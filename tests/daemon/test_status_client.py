"""The status socket's client (daemon/status_client.py) against real Unix socket servers that
misbehave: one that trickles its reply, one whose reply is nested too deep to parse."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crystalline.daemon.status_client import request

pytestmark = pytest.mark.timeout(120)

CTL = (sys.executable, "-m", "crystalline.daemon.cli", "ctl")
TRICKLE = 600  # bytes of a reply without its end, one every 20 ms: 12 s at the least


class OneReplyServer:
    """Accepts one connection on a real Unix socket, reads the request line and sends ``reply``,
    ``pace_s`` apart per byte when set (a daemon that trickles), stopping when the client goes."""

    def __init__(self, path: Path, reply: bytes, pace_s: float = 0.0) -> None:
        self.path, self.reply, self.pace_s = path, reply, pace_s
        self.sent = 0
        self.client_left = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.listener.settimeout(60)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(60)
            conn.recv(65536)
            step = 1 if self.pace_s else len(self.reply)
            try:
                for at in range(0, len(self.reply), step):
                    conn.sendall(self.reply[at : at + step])
                    self.sent += step
                    time.sleep(self.pace_s)
            except (BrokenPipeError, ConnectionResetError):
                self.client_left = True

    def __enter__(self) -> OneReplyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=60)
        self.listener.close()


@pytest.fixture
def sock_path() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="csc-", dir="/tmp") as d:
        yield Path(d) / "crystalline.sock"


def ctl_status(path: Path, *options: str) -> tuple[int, list[str]]:
    """`crystalline ctl status` against ``path``: its exit status and its stderr lines."""
    out = subprocess.run(
        [*CTL, "--socket", str(path), *options, "status"], capture_output=True, text=True, timeout=60
    )
    return out.returncode, out.stderr.splitlines()


def trickling(path: Path) -> OneReplyServer:
    return OneReplyServer(path, b'{"ok": true, "pad": "' + b"x" * TRICKLE, pace_s=0.02)


def test_a_trickled_reply_ends_at_the_requests_deadline(sock_path: Path) -> None:
    with trickling(sock_path) as server, pytest.raises(TimeoutError) as caught:
        request(sock_path, {"cmd": "status"}, timeout_s=0.5)
    assert str(caught.value) == f"{sock_path}: the daemon did not reply within 0.5 s (--timeout)"
    assert not server.thread.is_alive()
    assert server.client_left and server.sent < TRICKLE  # the client hung up mid-reply


def test_ctl_against_a_trickling_daemon_is_one_line(sock_path: Path) -> None:
    with trickling(sock_path) as server:
        status, lines = ctl_status(sock_path, "--timeout", "1")
    assert status == 1
    error = f"{sock_path}: the daemon did not reply within 1 s (--timeout)"
    assert lines == [f"crystalline: daemon unreachable at {sock_path}: {error}"]
    assert server.client_left and server.sent < TRICKLE


def test_a_reply_nested_too_deep_is_a_one_line_error(sock_path: Path) -> None:
    deep = b"[" * 50_000 + b"\n"
    with OneReplyServer(sock_path, deep), pytest.raises(ConnectionError) as caught:
        request(sock_path, {"cmd": "status"}, timeout_s=30)
    error = f"{sock_path}: the reply is nested too deep to read"
    assert str(caught.value) == error
    sock_path.unlink()
    with OneReplyServer(sock_path, deep):
        status, lines = ctl_status(sock_path)
    assert status == 1
    assert lines == [f"crystalline: daemon unreachable at {sock_path}: {error}"]


class AnsweringServer:
    """Answers every connection on a real Unix socket with ``{"ok": true, "data": null}`` once it
    has read a whole request line, counting the lines it got, until closed."""

    def __init__(self, path: Path) -> None:
        self.lines = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30)
                got = b""
                while not got.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                if got.endswith(b"\n"):
                    self.lines += 1
                    conn.sendall(b'{"ok": true, "data": null}\n')

    def __enter__(self) -> AnsweringServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=60)
        self.listener.close()


def test_a_field_nested_near_the_parsers_limit_is_sent_or_a_usage_error(sock_path: Path) -> None:
    """`ctl generate n=[[...]]` at depths around ctl's bound (64) and around where json's reader
    and writer give out (R19 2: 989-991 deep passed the reader in `fields` and overflowed the
    writer, exit 70 with a traceback): up to the bound each is sent (exit 0), past it one
    usage-error line (exit 64) before any connection."""
    depths = [1, 63, 64, 65, 100, 950, *range(984, 994), 1000]  # the parsers give out near 990
    with AnsweringServer(sock_path) as server:
        for depth in depths:
            nest = "[" * depth + "]" * depth
            out = subprocess.run(
                [*CTL, "--socket", str(sock_path), "--timeout", "30", "generate", f"n={nest}"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if depth <= 64:
                assert (out.returncode, out.stdout, out.stderr) == (0, "null\n", ""), depth
            else:
                assert out.returncode == 64, (depth, out.returncode, out.stderr[-2000:])
                assert out.stderr.splitlines() == [
                    "crystalline: error: n=...: the value is nested more than 64 levels deep"
                ], (depth, out.stderr)
    assert server.lines == 3  # only those sent reached the socket


@pytest.mark.parametrize("command", ["status", "ctl"])
def test_a_timeout_that_is_no_finite_positive_bounded_number_is_a_usage_error(
    sock_path: Path, command: str
) -> None:
    """--timeout of status and ctl: at least 0.001 and at most 3600 s (R19 10b: inf and 1e300 were
    an internal error, exit 70, from the socket's timeout; nan was "Invalid value NaN", exit 1;
    0 and -1 waited for nothing; R20 4: 1e-320 hid a missing socket behind "did not reply");
    the error names the flag and what it got."""
    argv = [sys.executable, "-m", "crystalline.daemon.cli", command, "--socket", str(sock_path)]
    tail = ["status"] if command == "ctl" else []
    for bad in ("inf", "-inf", "nan", "1e300", "0", "-1", "3600.5", "soon", "1e-320", "0.0009"):
        out = subprocess.run([*argv, f"--timeout={bad}", *tail], capture_output=True, text=True, timeout=60)
        assert out.returncode == 64 and out.stdout == "", (bad, out.returncode, out.stderr)
        assert out.stderr.splitlines()[-1] == (
            f"crystalline {command}: error: argument --timeout: "
            f"must be a number of seconds at least 0.001 and at most 3600, got {bad!r}"
        ), (bad, out.stderr)
        assert "Traceback" not in out.stderr
    for good in ("3600", "0.001"):  # in range: it tries
        out = subprocess.run([*argv, "--timeout", good, *tail], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "daemon unreachable" in out.stderr, (good, out.stderr)
