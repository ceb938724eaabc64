"""The status socket: JSON lines, one reply shape, bad clients do not hurt good ones."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crystalline.daemon.status_server import Command, CommandError, StatusServer, request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="cst-", dir="/tmp") as d:
        yield Path(d)


async def _echo(req: dict[str, Any]) -> Any:
    return {"echo": req.get("x")}


async def _refuse(req: dict[str, Any]) -> Any:
    raise CommandError("not now")


async def _crash(req: dict[str, Any]) -> Any:
    raise RuntimeError("boom")


COMMANDS = {
    "status": Command("status", _echo, control=False),
    "refuse": Command("refuse", _refuse, control=False),
    "crash": Command("crash", _crash, control=False),
    "stop": Command("stop", _echo, control=True),
}


async def _roundtrip(path: Path, payload: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return json.loads(line)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_replies_have_one_shape(sock_dir: Path) -> None:
    async def main() -> list[dict[str, Any]]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        try:
            payloads = [
                b'{"cmd": "status", "x": 1}\n',
                b'{"cmd": "refuse"}\n',
                b'{"cmd": "crash"}\n',
                b"garbage\n",
                b'{"cmd": "nope"}\n',
                b"[1, 2]\n",
            ]
            return [await _roundtrip(server.path, p) for p in payloads]
        finally:
            await server.close()

    ok, refused, crashed, garbage, unknown, not_object = run(main())
    assert ok == {"ok": True, "data": {"echo": 1}}
    assert refused == {"ok": False, "error": "not now"}
    assert crashed["ok"] is False and "boom" in crashed["error"]
    assert garbage == {"ok": False, "error": "request is not JSON"}
    assert unknown["ok"] is False and "unknown command" in unknown["error"]
    assert not_object["ok"] is False


def test_socket_is_0660_and_removed_on_close(sock_dir: Path) -> None:
    async def main() -> int:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        mode = stat.S_IMODE(os.stat(server.path).st_mode)
        await server.close()
        return mode

    assert run(main()) == 0o660
    assert not (sock_dir / "s.sock").exists()


def test_oversized_and_half_sent_requests_do_not_stop_the_server(sock_dir: Path) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        try:
            # a line far over the limit gets an error and a closed connection
            big = await _roundtrip(server.path, b'{"cmd": "status", "x": "' + b"a" * 200_000 + b'"}\n')
            # a half-sent request followed by EOF is dropped silently
            _, w = await asyncio.open_unix_connection(str(server.path))
            w.write(b'{"cmd": "sta')
            await w.drain()
            w.close()
            return big, await _roundtrip(server.path, b'{"cmd": "status", "x": 2}\n')
        finally:
            await server.close()

    big, after = run(main())
    assert big["ok"] is False and "longer than" in big["error"]
    assert after == {"ok": True, "data": {"echo": 2}}


def test_many_concurrent_clients_are_all_answered(sock_dir: Path) -> None:
    async def main() -> list[dict[str, Any]]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        try:
            return await asyncio.gather(
                *(
                    _roundtrip(server.path, json.dumps({"cmd": "status", "x": i}).encode() + b"\n")
                    for i in range(200)
                )
            )
        finally:
            await server.close()

    replies = run(main())
    assert [r["data"]["echo"] for r in replies] == list(range(200))


def test_several_requests_on_one_connection_and_idle_clients_time_out(sock_dir: Path) -> None:
    async def main() -> tuple[list[dict[str, Any]], bytes]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS, idle_timeout_s=0.3)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(server.path))
            writer.write(b'{"cmd": "status", "x": 1}\n{"cmd": "status", "x": 2}\n')
            await writer.drain()
            replies = [json.loads(await reader.readline()) for _ in range(2)]
            rest = await asyncio.wait_for(reader.read(), 10)  # server hangs up on the idle client
            writer.close()
            return replies, rest
        finally:
            await server.close()

    replies, rest = run(main())
    assert [r["data"]["echo"] for r in replies] == [1, 2]
    assert rest == b""


def test_control_commands_need_the_daemons_user(sock_dir: Path) -> None:
    # the test runs as the daemon's own user, so control commands pass
    async def main() -> dict[str, Any]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        try:
            return await _roundtrip(server.path, b'{"cmd": "stop", "x": 3}\n')
        finally:
            await server.close()

    assert run(main()) == {"ok": True, "data": {"echo": 3}}


def test_blocking_client_helper_and_a_live_socket_is_not_stolen(sock_dir: Path) -> None:
    async def main() -> None:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        try:
            reply = await asyncio.to_thread(request, server.path, {"cmd": "status", "x": 5})
            assert reply == {"ok": True, "data": {"echo": 5}}
            second = StatusServer(sock_dir / "s.sock", COMMANDS)
            with pytest.raises(OSError, match="already listening"):
                await second.start()
        finally:
            await server.close()

    run(main())
    with pytest.raises(OSError):
        request(sock_dir / "s.sock", {"cmd": "status"}, timeout_s=1)


def test_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    import socket

    stale = sock_dir / "s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # bound but nobody listens: what a killed daemon leaves

    async def main() -> dict[str, Any]:
        server = StatusServer(stale, COMMANDS)
        await server.start()
        try:
            return await _roundtrip(server.path, b'{"cmd": "status", "x": 9}\n')
        finally:
            await server.close()

    assert run(main())["ok"] is True
