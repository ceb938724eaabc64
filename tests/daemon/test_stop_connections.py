"""The stop with clients connected: the status socket and the dashboard end their connections
themselves within the time the stop gives them (an idle keep-alive client, a half-sent request,
a command or an event stream in progress), whatever Python's ``Server.wait_closed`` does."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from test_dashboard import FakeGeneration, Recorder, fake_status

from crystalline.daemon.commands import Command
from crystalline.daemon.connection_gate import GatedRunner
from crystalline.daemon.dashboard import Dashboard
from crystalline.daemon.metrics_history import MetricsHistory
from crystalline.daemon.status_server import StatusServer
from crystalline.ingest.registry import Registry
from tests._wait import until_async

pytestmark = pytest.mark.timeout(60)
BOUND_S = 30.0  # a close that does not end is a failure, not a hung test


def test_the_status_socket_closes_idle_half_sent_and_busy_connections_itself(tmp_path: Path) -> None:
    """Before, close cancelled the connections' tasks after ``Server.wait_closed`` (on 3.12+ that
    waits for every connection: an idle client held the stop for its 60 s idle timeout), and on
    3.11 each cancelled task made asyncio log 'Exception in callback ... CancelledError'."""
    loop_errors: list[dict[str, Any]] = []
    handler_ended: list[str] = []

    async def never(_req: dict[str, Any]) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handler_ended.append("cancelled")
            raise

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        path = tmp_path / "s.sock"
        server = StatusServer(path, {"never": Command("never", never, control=False)}, mode=0o600)
        await server.start()
        idle = await asyncio.open_unix_connection(str(path))
        half = await asyncio.open_unix_connection(str(path))
        half[1].write(b'{"cmd": "sta')  # half a request, no newline
        busy = await asyncio.open_unix_connection(str(path))
        busy[1].write(b'{"cmd": "never"}\n')
        for _r, w in (idle, half, busy):
            await w.drain()
        while server.stats()["clients"] < 3 or server.requests < 1:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(server.close(1.0), BOUND_S)
        assert server.stats()["clients"] == 0
        for reader, writer in (idle, half, busy):
            assert await asyncio.wait_for(reader.read(), BOUND_S) == b""  # closed: EOF, no reply
            writer.close()
        assert not path.exists()

    asyncio.run(scenario())
    assert handler_ended == ["cancelled"]  # the command in progress was ended, not waited for
    assert loop_errors == []


def test_the_dashboard_closes_keep_alive_half_sent_and_event_stream_clients(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        dashboard, host, port = await _open_dashboard(tmp_path)
        host_port = f"{host}:{port}"
        keep_alive = await asyncio.open_connection(host, int(port))
        keep_alive[1].write(f"GET /metrics HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
        head = await asyncio.wait_for(keep_alive[0].readuntil(b"\r\n\r\n"), BOUND_S)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()  # kept alive
        half = await asyncio.open_connection(host, int(port))
        half[1].write(f"GET /metrics HTTP/1.1\r\nHost: {host_port}\r\n".encode())  # the headers never end
        events = await asyncio.open_connection(host, int(port))
        events[1].write(f"GET /api/events HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode())
        assert (await asyncio.wait_for(events[0].readuntil(b"\r\n\r\n"), BOUND_S)).startswith(b"HTTP/1.1 200")
        await half[1].drain()
        await asyncio.wait_for(dashboard.close(2.0), BOUND_S)
        assert dashboard.state == "off"
        for reader, writer in (keep_alive, half, events):
            await asyncio.wait_for(reader.read(), BOUND_S)  # what was left, then EOF
            assert reader.at_eof()
            writer.close()
        assert not dashboard.token_path.exists()

    asyncio.run(scenario())


async def _open_dashboard(tmp_path: Path) -> tuple[Dashboard, str, int]:
    (tmp_path / "run").mkdir()
    registry = functools.partial(Registry, tmp_path / "registry.sqlite3", read_only=True)
    history = MetricsHistory(None)
    dashboard = Dashboard(("127.0.0.1", 0), tmp_path / "run", fake_status, Recorder().commands(),
                          history, tmp_path / "checkpoints", registry, FakeGeneration())  # fmt: skip
    await dashboard.start()
    assert dashboard.url is not None, dashboard.error
    host, port = dashboard.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return dashboard, host, int(port)


def _silent_peer(host: str, port: int, request: bytes) -> socket.socket:
    """A real client that sends ``request`` and then never reads nor answers (a receive buffer of
    a few KiB, so that what the server writes backs up at once)."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect((host, port))
    peer.sendall(request)
    return peer


def test_the_dashboard_closes_with_peers_that_never_read_and_refuses_new_ones(tmp_path: Path) -> None:
    """aiohttp's close (CLOSE_S; the stop's 54 s worst case adds CUT_S on) ends with an event
    stream whose client never reads, one that sent nothing, and one that sent half a request."""

    async def scenario() -> None:
        dashboard, host, port = await _open_dashboard(tmp_path)
        head = f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        half = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()  # the headers never end
        peers = [_silent_peer(host, port, request) for request in (head, b"", half)]
        await until_async(lambda: dashboard.info()["event_clients"] >= 1, "the event stream served", BOUND_S)
        await asyncio.wait_for(dashboard.close(2.0), BOUND_S)
        assert dashboard.state == "off" and dashboard.info()["event_clients"] == 0
        with pytest.raises(ConnectionRefusedError):  # no longer listening
            socket.create_connection((host, port), timeout=BOUND_S).close()
        for peer in peers:  # each was closed: what was sent, then EOF
            peer.settimeout(BOUND_S)
            while peer.recv(65536):
                pass
            peer.close()

    asyncio.run(scenario())


def test_a_dashboard_close_that_aiohttp_does_not_end_is_cut_at_its_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever aiohttp does (the aiohttp here ends it in CLOSE_S, an older one's
    ``Server.wait_closed`` on Python 3.12+ waits for every connection: a cleanup that never ends
    stands for it, the one thing not real here), the close ends at its deadline (what the stop
    gives it, CUT_S at least): the real server's connections are aborted and its listening socket
    closed, in one line."""
    hook: list[str] = []

    class NeverCleaned(GatedRunner):  # the dashboard's runner, whose cleanup never ends
        __slots__ = ()

        async def cleanup(self) -> None:
            hook.append("waiting")
            await asyncio.Event().wait()

    async def scenario() -> None:
        dashboard, host, port = await _open_dashboard(tmp_path)
        assert dashboard._runner is not None
        dashboard._runner.__class__ = NeverCleaned
        head = f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        peer = _silent_peer(host, port, head)
        await until_async(lambda: dashboard.info()["event_clients"] >= 1, "the event stream served", BOUND_S)
        await asyncio.wait_for(dashboard.close(1.0), BOUND_S)
        assert hook == ["waiting"] and dashboard.state == "off"
        with pytest.raises(ConnectionRefusedError):  # no longer listening, though aiohttp never stopped it
            socket.create_connection((host, port), timeout=BOUND_S).close()
        peer.settimeout(BOUND_S)
        with contextlib.suppress(ConnectionResetError):  # aborted: what was sent, then EOF or a reset
            while peer.recv(65536):
                pass
        peer.close()

    with caplog.at_level(logging.WARNING, "crystalline.dashboard"):
        asyncio.run(scenario())
    cut = [r.getMessage() for r in caplog.records if "close" in r.getMessage()]
    assert len(cut) == 1 and cut[0].startswith("dashboard: aiohttp's close did not end"), caplog.messages


def test_a_dashboard_close_with_its_budget_spent_still_gives_aiohttp_its_own_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop whose budget is spent gives the close nothing (0 s): aiohttp's ordinary close with
    an event stream that never reads (CLOSE_S) still ends by itself, closing every connection
    (EOF, not a reset), and nothing says it did not end: the cut (CUT_S at least) comes later."""

    async def scenario() -> None:
        dashboard, host, port = await _open_dashboard(tmp_path)
        head = f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        half = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
        peers = [_silent_peer(host, port, request) for request in (head, b"", half)]
        await until_async(lambda: dashboard.info()["event_clients"] >= 1, "the event stream served", BOUND_S)
        await asyncio.wait_for(dashboard.close(0.0), BOUND_S)
        assert dashboard.state == "off"
        for peer in peers:  # closed by aiohttp: what was sent, then EOF (an abort would reset)
            peer.settimeout(BOUND_S)
            while peer.recv(65536):
                pass
            peer.close()

    with caplog.at_level(logging.WARNING, "crystalline.dashboard"):
        asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if "close" in r.getMessage()] == []
