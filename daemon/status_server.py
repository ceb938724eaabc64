"""The status socket: a Unix stream socket speaking JSON lines.

One JSON object per line in, one per line out (debuggable with ``socat``); replies have one
shape: ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``. A bad request gets
an error reply and the connection stays usable; an oversized line, a client idle past the
deadline or one that will not read its replies is disconnected. The server keeps serving
everyone else, with a bounded number of connections and bounded buffers.

Commands that change the daemon (``control=True``) are only for the daemon's own user and
root, the operators (checked with SO_PEERCRED); members of the socket's group may use the
read-only ones. Limits that keep an operator in when someone else misbehaves (issue 19):

- at most ``max_per_uid`` connections per uid other than the operators', and the last
  ``operator_reserve`` of the ``max_clients`` connections are for operators only (both cut to
  what ``RLIMIT_NOFILE`` leaves, see :func:`connection_limits`);
- a connection is closed ``idle_timeout_s`` after its last request: a blank keep-alive line,
  garbage or half a line does not count as one;
- a client that does not read its replies holds at most ``REPLY_BUFFER`` bytes of them here
  (and ``2 * MAX_LINE`` of unread requests) and is disconnected when it has not taken them
  within ``write_timeout_s``;
- a command may carry a ``CommandLimit`` (a share of wall time per uid), as ``generate`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from ..descriptors import free_descriptors
from .commands import Command as Command  # the commands' shape, re-exported for the server's callers
from .commands import CommandError as CommandError
from .status_client import request as request  # the client half, re-exported for old callers

log = logging.getLogger("crystalline.status")

MAX_LINE = 16 * 1024  # a request; the reader holds at most twice this per client
MAX_CLIENTS = 512
OPERATOR_RESERVE = 64  # of MAX_CLIENTS, only for the daemon's user and root
MAX_PER_UID = 32  # for any other uid
REPLY_BUFFER = 16 * 1024  # unsent reply bytes held per client before waiting for it to read
IDLE_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 2.0  # close(): what its connections get to end, unless the caller says
# The socket's connections take at most an eighth of the free descriptors: a refused
# connection holds one too until the loop has closed it, and asyncio accepts a whole backlog
# (max_clients) at each wake-up, so several bursts of refusals can be open at once.
DESCRIPTOR_SHARE = 8


def connection_limits(max_clients: int, operator_reserve: int) -> tuple[int, int]:
    """``max_clients`` and ``operator_reserve`` cut to what ``RLIMIT_NOFILE`` leaves: an eighth
    of the descriptors still free (the rest is for refusals being closed, the crawler's
    connections, the ingest pool, checkpoints), the reserve in the same proportion; more
    connections than descriptors would make accept() fail with EMFILE for everyone, operators
    included. At least four connections and two reserved, so that an operator always gets in
    (their last connection may not be cleared yet when the next one comes)."""
    free = free_descriptors()
    clients = min(max_clients, max(4, free // DESCRIPTOR_SHARE))
    reserve = max(operator_reserve * clients // max(max_clients, 1), min(operator_reserve, 2))
    return clients, min(reserve, clients)


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
        max_per_uid: int = MAX_PER_UID,
        operator_reserve: int = OPERATOR_RESERVE,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        operators: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self.commands = commands
        self.mode = mode
        self.max_clients, self.operator_reserve = connection_limits(max_clients, operator_reserve)
        self.idle_timeout_s = idle_timeout_s
        self.max_per_uid = max_per_uid
        self.write_timeout_s = write_timeout_s
        self.operators = frozenset({0, os.getuid()}) if operators is None else operators
        self._server: asyncio.base_events.Server | None = None
        # each connection's task and its writer: close() ends them itself, with a deadline
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._per_uid: Counter[int | None] = Counter()
        self._operator_clients = 0
        self.requests = 0
        self.rejected = 0  # connections refused by the limits
        self.idle_closed = 0
        self.slow_dropped = 0  # clients that did not read their replies in time

    def stats(self) -> dict[str, Any]:
        """Counters for status: connections now, and what the limits turned away."""
        return {
            "clients": len(self._clients),
            "operator_clients": self._operator_clients,
            "requests": self.requests,
            "refused_connections": self.rejected,
            "idle_closed": self.idle_closed,
            "slow_dropped": self.slow_dropped,
            **{f"{c.name}_limit": c.limit.stats() for c in self.commands.values() if c.limit},
        }

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.path)
        # the umask makes the socket private from its first instant; chmod opens it to the group
        old = os.umask(0o177)
        try:
            # asyncio accepts up to ``backlog`` connections at each wake-up, each a descriptor
            # until refused and closed: past the free ones accept() fails (EMFILE) and asyncio
            # stops accepting for a second, operators included; so the backlog is max_clients
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE, backlog=self.max_clients
            )
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        log.info("status socket listening on %s", self.path)

    async def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop listening and end every connection within ``timeout_s`` (the daemon's stop gives
        it what is left of its budget): each is aborted at once, so an idle keep-alive client or
        a half-sent request sees the connection closed and its task ends; one still running a
        command is cancelled at half the time (its reply is lost). It never waits on a client,
        so it ends alike on Python 3.11 and on 3.12+, whose ``Server.wait_closed`` waits for
        every connection (waited for here only within the deadline, after they were closed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._server is not None:
            self._server.close()
        for writer in self._clients.values():
            writer.transport.abort()
        if self._clients:
            _done, running = await asyncio.wait(list(self._clients), timeout=timeout_s / 2)
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), max(0.0, deadline - loop.time()))
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _refusal(self, uid: int | None, operator: bool) -> str | None:
        """Why a new connection from ``uid`` is refused, or None when it may stay."""
        total = len(self._clients)
        if total >= self.max_clients:
            return f"too many connections ({total}); try again"
        if operator:
            return None
        if total >= self.max_clients - self.operator_reserve:
            reserve = self.operator_reserve
            return f"too many connections; the last {reserve} are kept for the daemon's user and root"
        if self._per_uid[uid] >= self.max_per_uid:
            return f"too many connections from uid {uid} (at most {self.max_per_uid})"
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        uid = _peer_uid(writer)
        operator = uid in self.operators
        refusal = self._refusal(uid, operator)
        if refusal is not None:
            self.rejected += 1
            # one small line into the kernel's buffer, never a wait on a client that may not read
            writer.write(json.dumps({"ok": False, "error": refusal}).encode() + b"\n")
            await self._close(writer)
            return
        self._clients[task] = writer
        self._per_uid[uid] += 1
        self._operator_clients += operator
        writer.transport.set_write_buffer_limits(high=REPLY_BUFFER)
        loop = asyncio.get_running_loop()
        idle_deadline = loop.time() + self.idle_timeout_s
        try:
            while True:
                remaining = idle_deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    line = await asyncio.wait_for(reader.readline(), remaining)
                except (asyncio.LimitOverrunError, ValueError):
                    await self._reply(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    return
                except TimeoutError:
                    self.idle_closed += 1
                    return
                if not line.endswith(b"\n"):
                    return  # EOF, or a half-sent request at EOF: nothing to answer
                if not line.strip():
                    continue  # a keep-alive newline: answered by nothing, and the deadline stays
                self.requests += 1
                reply, known = await self._dispatch(line, uid)
                if known:  # only a request for a real command keeps the connection alive
                    idle_deadline = loop.time() + self.idle_timeout_s
                if not await self._reply(writer, reply):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # only close() cancels it: ended, not failed (on 3.11 asyncio's stream callback
            # calls exception() on a cancelled task and logs "Exception in callback")
            return
        finally:
            self._clients.pop(task, None)
            self._per_uid[uid] -= 1
            if self._per_uid[uid] <= 0:
                del self._per_uid[uid]
            self._operator_clients -= operator
            await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close now: a client that has not taken its replies loses them (a plain close would
        wait, unbounded, for it to read them, keeping the buffer and the task alive)."""
        transport = writer.transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> bool:
        """Write one line; False when the client will not take it in time (slow or gone).

        Whatever the kernel does not take at once stays here, up to ``REPLY_BUFFER`` bytes
        before we wait for the client to read; one that has not within ``write_timeout_s`` is
        dropped, so a client that never reads costs a bounded amount of memory."""
        try:
            writer.write(json.dumps(reply, allow_nan=False, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.write_timeout_s)
            return True
        except TimeoutError:
            self.slow_dropped += 1
            log.info("status client did not read its replies for %.0f s: dropped", self.write_timeout_s)
            return False
        except (ConnectionError, ValueError):
            return False

    async def _dispatch(self, line: bytes, uid: int | None) -> tuple[dict[str, Any], bool]:
        """The reply to one request line, and whether it named a known command."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}, False
        except RecursionError:  # [[[...: the parser's depth, reached well within a line's 16 KiB
            return {"ok": False, "error": "request is not JSON: nested too deep"}, False
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object with a "cmd" string'}, False
        command = self.commands.get(request["cmd"])
        if command is None:
            known = ", ".join(sorted(self.commands))
            return {"ok": False, "error": f"unknown command {request['cmd'][:64]!r} (known: {known})"}, False
        if command.control and uid not in self.operators:
            error = f"permission denied: {command.name} is for the daemon's user and root"
            return {"ok": False, "error": error}, True
        return await self._run(command, request, -1 if uid is None else uid), True

    async def _run(self, command: Command, request: dict[str, Any], uid: int) -> dict[str, Any]:
        limit = command.limit
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if limit is not None:
                limit.admit(uid)
            try:
                data = await asyncio.wait_for(command.handler(request), COMMAND_TIMEOUT_S)
            finally:
                if limit is not None:
                    limit.done(uid, loop.time() - started)
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
