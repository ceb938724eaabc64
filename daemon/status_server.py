"""The status socket: a Unix stream socket speaking JSON lines.

One JSON object per line in, one per line out (debuggable with ``socat``); replies have one
shape: ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``. A bad request gets
an error reply and the connection stays usable; an oversized line, a client idle past the
deadline or one that will not read its replies is disconnected. The server keeps serving
everyone else, with a bounded number of connections and bounded buffers.

Commands that change the daemon (``control=True``) are only for the daemon's own user and
root (checked with SO_PEERCRED); members of the socket's group may use the read-only ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("crystalline.status")

MAX_LINE = 64 * 1024
MAX_CLIENTS = 512
IDLE_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 120.0


class CommandError(Exception):
    """A request the daemon understood but cannot honour; its message goes to the client."""


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    control: bool  # changes the daemon's state: own user and root only
    help: str = ""


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class StatusServer:
    def __init__(
        self,
        path: Path,
        commands: dict[str, Command],
        mode: int = 0o660,
        max_clients: int = MAX_CLIENTS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.commands = commands
        self.mode = mode
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.rejected = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.path)
        # the umask makes the socket private from its first instant; chmod opens it to the group
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE, backlog=max(self.max_clients, 128)
            )
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        log.info("status socket listening on %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.max_clients:
            self.rejected += 1
            await self._reply(writer, {"ok": False, "error": "too many connections, try again"})
            writer.close()
            return
        self._clients.add(task)
        uid = _peer_uid(writer)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
                except (asyncio.LimitOverrunError, ValueError):
                    await self._reply(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    return
                except TimeoutError:
                    return
                if not line.endswith(b"\n"):
                    return  # EOF, or a half-sent request at EOF: nothing to answer
                if not line.strip():
                    continue
                self.requests += 1
                reply = await self._dispatch(line, uid)
                if not await self._reply(writer, reply):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> bool:
        """Write one line; False when the client will not take it in time (slow or gone)."""
        try:
            writer.write(json.dumps(reply, allow_nan=False, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            return True
        except (TimeoutError, ConnectionError, ValueError):
            return False

    async def _dispatch(self, line: bytes, uid: int | None) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object with a "cmd" string'}
        command = self.commands.get(request["cmd"])
        if command is None:
            known = ", ".join(sorted(self.commands))
            return {"ok": False, "error": f"unknown command {request['cmd'][:64]!r} (known: {known})"}
        if command.control and uid not in (0, os.getuid()):
            return {
                "ok": False,
                "error": f"permission denied: {command.name} is for the daemon's user and root",
            }
        try:
            data = await asyncio.wait_for(command.handler(request), COMMAND_TIMEOUT_S)
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except TimeoutError:
            return {"ok": False, "error": f"{command.name} timed out"}
        except Exception as exc:  # a bug in a handler must not take the socket down
            log.exception("status command %s failed", command.name)
            return {"ok": False, "error": f"internal error in {command.name}: {exc}"}
        return {"ok": True, "data": data}


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file left by a dead daemon; refuse to start beside a live one."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listening: a leftover
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another daemon is already listening here")


def request(path: Path, payload: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request and read its reply (the client side); OSError when unreachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{path}: the daemon closed the connection")
            buf += chunk
            if len(buf) > 16 * 1024 * 1024:
                raise ConnectionError(f"{path}: reply too large")
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise ConnectionError(f"{path}: malformed reply")
    return reply
