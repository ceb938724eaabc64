"""The status socket: JSON lines, one reply shape, bad clients do not hurt good ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _hostile_user import HostileUser
from _wait import until_async

from crystalline.daemon.status_client import request
from crystalline.daemon.status_server import MAX_PER_UID, Command, CommandError, StatusServer

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


# ---- limits that keep an operator in (issue 19) ------------------------------------------------


def test_per_uid_cap_and_the_operators_reserve(sock_dir: Path) -> None:
    async def main() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, int]]:
        # this test's uid counts as an ordinary user here: at most 3 connections, and of the
        # 6 slots the last 2 are for operators
        plain = StatusServer(
            sock_dir / "p.sock",
            COMMANDS,
            max_clients=6,
            max_per_uid=3,
            operator_reserve=2,
            operators=frozenset(),
        )
        await plain.start()
        try:
            held = [await asyncio.open_unix_connection(str(plain.path)) for _ in range(3)]
            await asyncio.sleep(0.1)  # the server has registered them
            refused = [await _roundtrip(plain.path, b'{"cmd": "status", "x": 1}\n') for _ in range(2)]
            for _, w in held:
                w.close()
        finally:
            await plain.close()
        # as an operator the same uid gets every slot, the reserve included
        ops = StatusServer(sock_dir / "o.sock", COMMANDS, max_clients=6, max_per_uid=3, operator_reserve=2)
        await ops.start()
        try:
            held = [await asyncio.open_unix_connection(str(ops.path)) for _ in range(5)]
            await asyncio.sleep(0.1)
            answered = await _roundtrip(ops.path, b'{"cmd": "status", "x": 2}\n')
            stats = ops.stats()
            for _, w in held:
                w.close()
        finally:
            await ops.close()
        return refused, answered, stats

    refused, answered, stats = run(main())
    assert all(r["ok"] is False and "too many connections from uid" in r["error"] for r in refused)
    assert answered == {"ok": True, "data": {"echo": 2}}
    assert stats["operator_clients"] == 6 and stats["refused_connections"] == 0


def test_a_lone_newline_does_not_keep_a_connection_alive(sock_dir: Path) -> None:
    """Newlines on one connection and requests on another, every 0.1 s, until the server has
    closed the first (EOF seen, within a deadline: not a fixed window): the requests, each well
    inside the idle timeout of the one before, keep the second; one more is answered after."""

    async def main() -> tuple[bytes | None, list[dict[str, Any]], dict[str, int]]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS, idle_timeout_s=2.0)
        await server.start()
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            idle.connect(str(server.path))
            idle.setblocking(False)
            busy_r, busy_w = await asyncio.open_unix_connection(str(server.path))
            answers: list[dict[str, Any]] = []
            heard: bytes | None = None
            end = time.monotonic() + 60
            while heard != b"" and time.monotonic() < end:
                with contextlib.suppress(OSError):  # EPIPE once the server has hung up
                    idle.send(b"\n")
                with contextlib.suppress(BlockingIOError):
                    heard = idle.recv(4096)  # b"" is EOF: the server closed it
                busy_w.write(json.dumps({"cmd": "status", "x": len(answers)}).encode() + b"\n")
                answers.append(json.loads(await asyncio.wait_for(busy_r.readline(), 10)))
                await asyncio.sleep(0.1)
            busy_w.write(json.dumps({"cmd": "status", "x": len(answers)}).encode() + b"\n")
            answers.append(json.loads(await asyncio.wait_for(busy_r.readline(), 10)))
            busy_w.close()
            return heard, answers, server.stats()
        finally:
            idle.close()
            await server.close()

    heard, answers, stats = run(main())
    assert heard == b""  # no reply to the keep-alive newlines, then EOF
    assert len(answers) > 2 and [a["data"]["echo"] for a in answers] == list(range(len(answers)))
    assert stats["idle_closed"] == 1  # requests do keep a connection alive


async def _bulky(req: dict[str, Any]) -> Any:
    return {"pad": "x" * 2000}


def test_clients_that_never_read_are_dropped_and_others_still_answered(sock_dir: Path) -> None:
    commands = {**COMMANDS, "status": Command("status", _bulky, control=False)}

    async def main() -> tuple[dict[str, Any], list[int], dict[str, int]]:
        server = StatusServer(sock_dir / "s.sock", commands, write_timeout_s=0.5)
        await server.start()
        try:
            hogs = []
            for _ in range(20):  # 2000 requests of 2 kB replies each: far more than any buffer
                r, w = await asyncio.open_unix_connection(str(server.path))
                w.write(b'{"cmd": "status"}\n' * 2000)
                hogs.append((r, w))
            await until_async(lambda: server.slow_dropped >= 20, lambda: str(server.stats()), 30, 0.1)
            answered = await _roundtrip(server.path, b'{"cmd": "stop", "x": 4}\n')
            received = []
            for r, w in hogs:  # what each hog could still read: bounded, then EOF (or a reset)
                n = 0
                with contextlib.suppress(ConnectionResetError):
                    while chunk := await asyncio.wait_for(r.read(1 << 16), 10):
                        n += len(chunk)
                received.append(n)
                w.close()
            return answered, received, server.stats()
        finally:
            await server.close()

    answered, received, stats = run(main())
    assert answered == {"ok": True, "data": {"echo": 4}}
    assert stats["slow_dropped"] == 20 and stats["clients"] == 0
    # each got only what the kernel's socket buffers hold, far from the 4 MB it asked for
    assert max(received) < 2000 * 2000 // 4


CHILD_HOLDS = 600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_another_user_holding_600_connections_cannot_lock_root_out(sock_dir: Path) -> None:
    os.chmod(sock_dir, 0o755)  # nobody must reach the socket

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, int]]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS, mode=0o666, idle_timeout_s=1.5)
        await server.start()
        hostile = HostileUser(server.path, CHILD_HOLDS, hold_s=6.0, refusals=CHILD_HOLDS - MAX_PER_UID)
        try:
            first = await asyncio.wait_for(asyncio.to_thread(hostile.first), 60)
            # while nobody holds its connections: root is answered, several times over
            replies = [
                await asyncio.wait_for(asyncio.to_thread(request, server.path, {"cmd": "stop", "x": i}), 10)
                for i in range(5)
            ]
            last = await asyncio.wait_for(asyncio.to_thread(hostile.last), 60)
            return first, replies, last, server.stats()
        finally:
            code = await asyncio.to_thread(hostile.wait)
            await server.close()
            assert code == 0

    first, replies, last, stats = run(main())
    assert (first["held"], first["refused"]) == (MAX_PER_UID, CHILD_HOLDS - MAX_PER_UID)
    assert [r["data"]["echo"] for r in replies] == list(range(5))
    assert last == {"closed": MAX_PER_UID}  # newlines did not keep them: idle timeout
    assert stats["idle_closed"] == MAX_PER_UID and stats["clients"] == 0


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_the_operators_reserve_refuses_others_once_the_shared_slots_are_full(sock_dir: Path) -> None:
    os.chmod(sock_dir, 0o755)  # nobody must reach the socket

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        # a per-uid cap above the total: what stops nobody is the reserve, not the cap
        server = StatusServer(
            sock_dir / "s.sock", COMMANDS, mode=0o666, max_clients=12, operator_reserve=4, max_per_uid=100
        )
        await server.start()
        hostile = HostileUser(server.path, 12, hold_s=2.0, refusals=4)
        try:
            first = await asyncio.wait_for(asyncio.to_thread(hostile.first), 30)
            replies = [
                await asyncio.wait_for(asyncio.to_thread(request, server.path, {"cmd": "stop", "x": i}), 10)
                for i in range(3)
            ]
            return first, replies
        finally:
            code = await asyncio.to_thread(hostile.wait)
            await server.close()
            assert code == 0

    first, replies = run(main())
    assert (first["held"], first["refused"]) == (8, 4)
    assert first["reasons"] == ["too many connections; the last 4 are kept for the daemon's user and root"]
    assert [r["data"]["echo"] for r in replies] == [0, 1, 2]  # root gets a reserved slot


SERVER_UNDER_A_LIMIT = """
import asyncio, json, resource, sys
from pathlib import Path
from crystalline.daemon.status_server import Command, StatusServer
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
async def status(req):
    return {"up": True}
async def main():
    commands = {"status": Command("status", status, control=False)}
    server = StatusServer(Path(sys.argv[1]), commands, mode=0o666, max_per_uid=10_000, idle_timeout_s=30)
    await server.start()
    print(json.dumps({"max_clients": server.max_clients, "reserve": server.operator_reserve}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes it
    await server.close()
asyncio.run(main())
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become another user")
def test_connection_limits_follow_the_open_files_limit(sock_dir: Path) -> None:
    os.chmod(sock_dir, 0o755)
    path = sock_dir / "s.sock"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_UNDER_A_LIMIT, str(path), "96"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        limits = json.loads(server.stdout.readline())
        held = limits["max_clients"] - limits["reserve"]
        hostile = HostileUser(path, 200, hold_s=2.0, refusals=200 - held)
        first = hostile.first()
        replies = [request(path, {"cmd": "status"}, timeout_s=10) for _ in range(3)]
        assert hostile.wait() == 0
    finally:
        server.communicate("", timeout=30)
    assert 2 <= limits["max_clients"] < 96 // 2 and limits["reserve"] >= 1
    assert (first["held"], first["refused"]) == (held, 200 - held)  # each told, none left hanging
    assert replies == [{"ok": True, "data": {"up": True}}] * 3


def test_a_request_nested_too_deep_for_the_json_parser_is_answered(sock_dir: Path) -> None:
    # 16 KiB hold 5,000 levels of [...]; Python's json raises RecursionError (no ValueError) past ~1,000
    deep = b'{"cmd": "status", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"

    async def main() -> list[dict[str, Any]]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS)
        await server.start()
        try:
            return [await _roundtrip(server.path, p) for p in (deep, b'{"cmd": "status", "x": 1}\n')]
        finally:
            await server.close()

    too_deep, after = run(main())
    assert too_deep == {"ok": False, "error": "request is not JSON: nested too deep"}
    assert after == {"ok": True, "data": {"echo": 1}}


def test_a_refused_client_reads_the_refusal_even_when_its_request_cannot_be_sent(sock_dir: Path) -> None:
    # The server writes its refusal and closes without reading: a request bigger than the
    # socket's buffer fails to send (EPIPE), as a small one does when the server was quicker.
    # The client still reads the line, so `crystalline status` says why instead of 'Broken pipe'.
    async def main() -> dict[str, Any]:
        server = StatusServer(sock_dir / "s.sock", COMMANDS, max_clients=1, operator_reserve=0)
        await server.start()
        try:
            held = await asyncio.open_unix_connection(str(server.path))
            await until_async(lambda: server.stats()["clients"] == 1, "the held connection is registered", 10)
            reply = await asyncio.to_thread(request, server.path, {"cmd": "status", "x": "a" * 1_000_000})
            held[1].close()
            return reply
        finally:
            await server.close()

    reply = run(main())
    assert reply["ok"] is False and "connections" in reply["error"]
