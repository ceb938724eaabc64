"""The dashboard's listener in a real daemon: ``--http off`` opens no TCP socket at all, a port
in use is reported in status while the daemon trains on, and the log carries progress lines."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _dashboard_daemon import corpus_parts, running_daemon, status
from _wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cd-", dir="/tmp") as d:  # AF_UNIX path limit
        yield Path(d)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue  # closed while we looked
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    return inodes


def _tcp_listeners(inodes: set[str]) -> list[str]:
    """The local addresses of listening TCP sockets among ``inodes``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


def test_http_off_opens_no_listener_and_logs_progress(short_dir: Path, corpus_file: Path) -> None:
    inbox = corpus_parts(corpus_file.read_text(encoding="utf-8"))
    with running_daemon(short_dir, inbox, "--http", "off") as daemon:
        data = status(daemon["run"])
        assert data["http"] == {"url": None, "state": "off"}
        assert not (daemon["run"] / "dashboard.json").exists()
        assert _tcp_listeners(_socket_inodes(daemon["proc"].pid)) == []
        assert _socket_inodes(daemon["proc"].pid), "the status socket at least should be there"
        # the first step gets its line at the supervisor's next tick (1 s), then every 30 s
        until(
            lambda: "progress: step " in daemon["log"].read_text(encoding="utf-8", errors="replace"),
            "no progress line in the log", 30, 0.5,
        )  # fmt: skip


def test_port_in_use_is_reported_and_training_goes_on(short_dir: Path, corpus_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        inbox = corpus_parts(corpus_file.read_text(encoding="utf-8"))
        with running_daemon(short_dir, inbox, "--http", f"127.0.0.1:{port}") as daemon:
            http = status(daemon["run"])["http"]
            assert http["url"] is None
            assert http["error"].startswith(f"cannot listen on 127.0.0.1:{port}")
            assert status(daemon["run"])["state"] == "running"
