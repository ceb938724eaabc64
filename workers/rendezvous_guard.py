"""The public side of the rendezvous port on the member that hosts it: c10d's TCPStore listens
on a private loopback port, and this guard owns ``HOST:PORT``.

It is not a protocol of our own: every accepted connection must open with c10d's own client
handshake (:data:`HANDSHAKE`: the store's query type VALIDATE, then its ``validationMagicNumber``
0x3C85F7CE in host byte order, which every TCPStore client sends first), and from then on its
bytes are carried both ways to the store unchanged. Anything else (garbage, an HTTP request, a
client that sends nothing within ``handshake_timeout_s`` or resets during it, a connection
beyond ``max_connections`` or beyond ``max_per_source`` from one address) is closed, counted
(``refused``) and logged in one warning line with the peer and an escaped preview of what came.
Every line it logs (refusals, failed accepts, relayed connections ended by an error, errors of
its own loop) comes out of one budget, at most ``log_burst`` lines per ``log_window_s``; the
rest are summed in one line per window, so a flood cannot fill the journal. c10d itself logs
nothing above trace level for such a client (the classic server resets it silently).

Out of descriptors (EMFILE/ENFILE) the pending connection stays in the kernel's backlog and the
listener stays readable, so the guard stops watching it for ``ACCEPT_PAUSE_S`` and closes the
oldest connection still in its handshake (a refusal) to free a descriptor. An unexpected error
in its loop is logged and the loop goes on (the connection it concerned is closed); whatever
ends the thread closes the listener, so clients are refused at once instead of waiting, and
``health`` says ``down: <why>``.

A connection costs this process :data:`DESCRIPTORS_PER_CONNECTION` descriptors (its end of
the client's connection, the relay to the store and the store's own end of that: c10d's server
runs in this process, :func:`host_store`), so ``max_connections`` is cut at start to what a
:data:`DESCRIPTOR_SHARE` of the descriptors ``RLIMIT_NOFILE`` leaves then pays for (the rest is
the engine's, the store readers' and checkpoints'), and ``max_per_source`` to that.

One thread runs a selector over every socket, taking at most :data:`ACCEPT_BATCH` new
connections a pass (a flood of connections cannot keep it from the others); each direction of
a connection has a buffer of ``buffer_bytes`` and a side stops being read while its peer's
buffer is full (back-pressure). The store must take a relayed connection within
``handshake_timeout_s`` too (its accept queue full: the connection is closed, not left to the
kernel's SYN retries), and a client must take the store's replies: one that leaves them unread
for ``stall_timeout_s`` (the guard's buffer never empty meanwhile) is closed, since c10d's
classic server blocks in its send to it and every other client of the store waits (before, one
connection pipelining ``get``s it never read held a member's 5 s ``add`` for over 35 s).
EOF in one direction is passed on as a half-close once its buffer is drained; an error on
either side closes both. Training never waits on it: only store traffic (membership, forming a
group) passes here, never a step's allreduce (gloo connects the members directly).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from ..descriptors import free_descriptors

log = logging.getLogger("crystalline.cluster.guard")

#: What every c10d TCPStore client (torch 2.13, both backends' client) sends first: QueryType
#: VALIDATE (0) as one byte, then the uint32 validationMagicNumber in host byte order. Checked
#: against the installed torch when the store starts (a client of a future torch that opens
#: differently is refused, and hosting fails with a one-line error: fail closed).
HANDSHAKE = struct.pack("=BI", 0, 0x3C85F7CE)
PREVIEW_BYTES = 24
ACCEPT_PAUSE_S = 0.5  # no accept for this long after EMFILE/ENFILE
ERROR_PAUSE_S = 0.1  # after an unexpected error of a whole pass (one that repeats cannot spin)
ACCEPT_BATCH = 64  # new connections taken in one pass at most
#: Descriptors a connection costs this process: its end of the client's connection, the relay
#: to the store, and the store's end of the relay (measured in tests/workers/test_rendezvous_guard.py).
DESCRIPTORS_PER_CONNECTION = 3
DESCRIPTOR_SHARE = 4  # the guard's connections take at most a quarter of what is left at start
MIN_CONNECTIONS = 4  # whatever the limit (a member holds 1-3)
#: What the window's summary line calls each kind of line it did not log one by one.
KINDS = {
    "refused": "refused connections",
    "accept": "failed accepts",
    "ended": "relayed connections ended by an error",
    "error": "guard errors",
}


def preview(data: bytes) -> str:
    """What a refused peer sent, short and escaped (printable ASCII as is, the rest as \\xNN)."""
    text = repr(data[:PREVIEW_BYTES])[2:-1]
    return f"'{text}'{'...' if len(data) > PREVIEW_BYTES else ''} ({len(data)} bytes read)"


@dataclass
class _Conn:
    client: socket.socket
    peer: str
    deadline: float  # for the handshake
    head: bytes = b""  # what came before the handshake was complete
    store: socket.socket | None = None
    connected: bool = False  # the store side's connect completed
    up: bytearray = field(default_factory=bytearray)  # client -> store
    down: bytearray = field(default_factory=bytearray)  # store -> client
    unread_since: float = 0.0  # since when the store's replies wait in ``down`` (0: none wait)
    client_eof: bool = False
    store_eof: bool = False
    up_shut: bool = False
    down_shut: bool = False
    closed: bool = False


class RendezvousGuard:
    """Accepts on ``public`` and relays connections that open with :data:`HANDSHAKE` to the
    store at ``upstream`` (loopback). ``refused`` counts the connections it closed; OSError from
    the constructor when ``public`` cannot be bound (the port is taken). ``max_connections`` and
    ``max_per_source`` are what it allows after the cut to the descriptors (:func:`connection_cap`)."""

    def __init__(
        self,
        public: tuple[str, int],
        upstream: tuple[str, int],
        *,
        handshake_timeout_s: float = 5.0,
        stall_timeout_s: float = 5.0,
        max_connections: int = 512,
        max_per_source: int = 32,
        buffer_bytes: int = 16384,
        log_burst: int = 10,
        log_window_s: float = 60.0,
    ) -> None:
        self.upstream = upstream
        self.handshake_timeout_s = handshake_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.max_connections = connection_cap(max_connections)
        self.max_per_source = min(max_per_source, self.max_connections)
        if self.max_connections < max_connections:
            log.info(
                "rendezvous guard: at most %d connections, not %d (%d descriptors each, within a "
                "share of what RLIMIT_NOFILE leaves)", self.max_connections, max_connections,
                DESCRIPTORS_PER_CONNECTION,
            )  # fmt: skip
        self.buffer_bytes = buffer_bytes
        self.log_burst, self.log_window_s = log_burst, log_window_s
        self.refused = 0
        self.relayed = 0
        self.last_refusal = ""  # the newest refusal's reason (startup's check names it)
        self.errors = 0  # unexpected errors in its loop (it went on)
        self.last_error = ""
        self.ended = ""  # why the thread ended ("closed", or the error that ended it)
        self._logged = 0  # lines logged in the current window
        self._unlogged = dict.fromkeys(KINDS, 0)  # lines not logged one by one in it, by kind
        self._window = time.monotonic()
        self._conns: dict[int, _Conn] = {}  # by id(), oldest first
        self._per_source: dict[str, int] = {}  # open connections by the peer's address
        self._accept_at = 0.0  # while the listener is not watched (out of descriptors): until then
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in public[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(public)
            self.listener.listen(128)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.address = self.listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="rendezvous-guard", daemon=True)
        self._thread.start()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def health(self) -> str:
        """``ok`` (with the count and the last of its loop's errors, if any) while the thread
        runs; ``down: <why>`` once it ended (``closed``, or the error that ended it)."""
        if not self._thread.is_alive():
            return f"down: {self.ended}"
        if not self.errors:
            return "ok"
        plural = "s" if self.errors > 1 else ""
        return f"ok, {self.errors} error{plural} in its loop (the last: {self.last_error})"

    # ---- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._pass()
                except Exception as exc:  # a bug must not end the guard: log, count, go on
                    self._failed(exc)
                    self._stop.wait(ERROR_PAUSE_S)
            self.ended = "closed"
        except BaseException as exc:  # ends the thread: said in health, the listener closed
            self.ended = _describe(exc)
            log.error("rendezvous guard ended: %s", self.ended, exc_info=True)
        finally:  # the port first: whatever else fails here, no client waits on it
            self.listener.close()
            for conn in list(self._conns.values()):
                try:
                    self._close(conn)
                except Exception as exc:  # the others are still closed
                    log.error("rendezvous guard: closing %s: %s", conn.peer, _describe(exc))
            self._selector.close()

    def _pass(self) -> None:
        """One select and what it found; then the handshake deadlines and the log window."""
        now = time.monotonic()
        if self._accept_at and now >= self._accept_at:
            self._accept_at = 0.0
            self._selector.register(self.listener, selectors.EVENT_READ, None)
        deadlines = [c.deadline for c in self._conns.values() if not c.connected]
        deadlines += [c.unread_since + self.stall_timeout_s for c in self._conns.values() if c.unread_since]
        if self._accept_at:
            deadlines.append(self._accept_at)
        wait = min([0.5, *(max(0.0, d - now) for d in deadlines)])
        for key, events in self._selector.select(wait):
            if key.data is None:
                self._accept()
                continue
            conn, side = key.data
            if conn.closed:  # closed by the other side's event of this round
                continue
            try:
                self._handle(conn, side, events)
            except Exception as exc:  # unexpected: this connection goes, the others stay
                self._failed(exc)
                self._close(conn)
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if not c.connected and now >= c.deadline]:
            within = f"within {self.handshake_timeout_s:g} s"
            if conn.store is None:
                self._refuse(conn, f"sent {'nothing' if not conn.head else preview(conn.head)} {within}")
                continue
            self._end(conn, f"the store did not take it {within}")
        stall = self.stall_timeout_s
        for conn in [c for c in self._conns.values() if c.unread_since and now >= c.unread_since + stall]:
            self._end(conn, f"it left the store's replies unread for {stall:g} s")
        self._flush_log_window(now)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = _describe(exc)
        self._note("error", f"rendezvous guard error: {self.last_error}", exc_info=exc)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):  # the rest at the next pass, after the others' events
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, or one the kernel aborted
                self._accept_failed(exc)
                return
            peer, source = f"{addr[0]}:{addr[1]}", addr[0]
            why = None
            if len(self._conns) >= self.max_connections:
                why = f"{self.max_connections} connections are open already"
            elif self._per_source.get(source, 0) >= self.max_per_source:
                why = f"{self.max_per_source} connections from {source} are open already"
            if why is not None:
                self._refuse(_Conn(sock, peer, 0.0), why)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a vanished peer is reaped
            conn = _Conn(sock, peer, time.monotonic() + self.handshake_timeout_s)
            self._conns[id(conn)] = conn
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self._selector.register(sock, selectors.EVENT_READ, (conn, "client"))

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors the connection stays in the backlog and the listener readable:
        stop watching it for a while (no busy loop, whatever the error), and then free a
        descriptor from the oldest connection still in its handshake."""
        self._note("accept", f"rendezvous guard cannot accept: {exc}; not accepting for {ACCEPT_PAUSE_S:g} s")
        self._selector.unregister(self.listener)
        self._accept_at = time.monotonic() + ACCEPT_PAUSE_S
        oldest = next((c for c in self._conns.values() if c.store is None), None)
        if oldest is not None and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self._refuse(oldest, f"closed to free a descriptor (out of descriptors: {exc.strerror})")

    def _handle(self, conn: _Conn, side: str, events: int) -> None:
        try:
            if conn.store is None:
                self._read_handshake(conn)
            elif side == "store" and not conn.connected:
                self._store_connected(conn)
            else:
                self._pump(conn, side, events)
        except BlockingIOError:  # a spurious wake-up: nothing to move now
            pass
        except (OSError, ValueError) as exc:  # ValueError: a socket the other side closed
            if conn.store is None:  # a reset before the handshake was complete: a refusal
                what = "nothing" if not conn.head else preview(conn.head)
                self._refuse(conn, f"{exc} after sending {what}")
                return
            self._end(conn, str(exc), level=logging.INFO)

    def _read_handshake(self, conn: _Conn) -> None:
        data = conn.client.recv(len(HANDSHAKE) - len(conn.head))
        if not data:
            what = "nothing" if not conn.head else preview(conn.head)
            self._refuse(conn, f"closed after sending {what}")
            return
        conn.head += data
        if not HANDSHAKE.startswith(conn.head):
            with contextlib.suppress(OSError):  # a little more of it, for the line
                conn.head += conn.client.recv(PREVIEW_BYTES + 1 - len(conn.head), socket.MSG_DONTWAIT)
            self._refuse(conn, f"sent {preview(conn.head)}, not c10d's TCPStore handshake")
            return
        if len(conn.head) < len(HANDSHAKE):
            return
        store = socket.socket(socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET)
        store.setblocking(False)
        conn.store, conn.up[:] = store, conn.head
        err = store.connect_ex(self.upstream)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"cannot reach the store at {self.upstream[0]}:{self.upstream[1]}")
        self._watch(conn.client, 0, (conn, "client"))  # until the store side is up
        self._watch(store, selectors.EVENT_WRITE, (conn, "store"))
        self.relayed += 1

    def _store_connected(self, conn: _Conn) -> None:
        assert conn.store is not None
        err = conn.store.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"cannot reach the store at {self.upstream[0]}:{self.upstream[1]}")
        conn.connected = True
        self._interest(conn)

    def _pump(self, conn: _Conn, side: str, events: int) -> None:
        """Move what can move on ``side``'s socket: read into its peer's buffer while it has
        room, write out its own buffer, pass an EOF on once the buffer it ends is drained."""
        assert conn.store is not None
        sock = conn.client if side == "client" else conn.store
        inbox = conn.up if side == "client" else conn.down  # what sock reads goes here
        outbox = conn.down if side == "client" else conn.up  # what sock writes comes from here
        if events & selectors.EVENT_READ and len(inbox) < self.buffer_bytes:
            data = sock.recv(self.buffer_bytes - len(inbox))
            if data:
                inbox += data
            elif side == "client":
                conn.client_eof = True
            else:
                conn.store_eof = True
        if events & selectors.EVENT_WRITE and outbox:
            del outbox[: sock.send(outbox)]
        for buffer, eof, shut, target in (
            (conn.up, conn.client_eof, conn.up_shut, conn.store),
            (conn.down, conn.store_eof, conn.down_shut, conn.client),
        ):
            if eof and not buffer and not shut:
                target.shutdown(socket.SHUT_WR)
                if target is conn.store:
                    conn.up_shut = True
                else:
                    conn.down_shut = True
        if conn.up_shut and conn.down_shut:
            self._close(conn)
        else:
            self._interest(conn)

    def _interest(self, conn: _Conn) -> None:
        """Read a side while its peer's buffer has room; write it while its own has bytes."""
        assert conn.store is not None
        if not conn.down:
            conn.unread_since = 0.0
        elif not conn.unread_since:
            conn.unread_since = time.monotonic()
        room = self.buffer_bytes
        client = (selectors.EVENT_READ if not conn.client_eof and len(conn.up) < room else 0) | (
            selectors.EVENT_WRITE if conn.down else 0
        )
        store = (selectors.EVENT_READ if not conn.store_eof and len(conn.down) < room else 0) | (
            selectors.EVENT_WRITE if conn.up else 0
        )
        self._watch(conn.client, client, (conn, "client"))
        self._watch(conn.store, store, (conn, "store"))

    def _watch(self, sock: socket.socket, events: int, data: tuple[_Conn, str]) -> None:
        """Select ``sock`` for ``events`` (none: not at all)."""
        try:
            self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, data)
            return
        if events:
            self._selector.modify(sock, events, data)
        else:
            self._selector.unregister(sock)

    # ---- refusals ------------------------------------------------------------------------------
    def _refuse(self, conn: _Conn, why: str) -> None:
        self.refused += 1
        self.last_refusal = why
        self._note("refused", f"refused a connection to the rendezvous point from {conn.peer}: {why}")
        self._close(conn)

    def _end(self, conn: _Conn, why: str, level: int = logging.WARNING) -> None:
        """Close a connection past its handshake, in one line (within the budget)."""
        self._note("ended", f"rendezvous connection from {conn.peer} ended: {why}", level=level)
        self._close(conn)

    def _note(
        self, kind: str, line: str, *, level: int = logging.WARNING, exc_info: BaseException | None = None
    ) -> None:
        """One line, within the window's budget; beyond it the line is counted under ``kind``
        and summed when the window ends."""
        self._flush_log_window(time.monotonic())
        if self._logged < self.log_burst:
            self._logged += 1
            log.log(level, "%s", line, exc_info=exc_info)
        else:
            self._unlogged[kind] += 1

    def _flush_log_window(self, now: float) -> None:
        if now - self._window < self.log_window_s:
            return
        counts = [f"{n} {KINDS[kind]}" for kind, n in self._unlogged.items() if n]
        if counts:
            log.warning("not logged one by one in the last %.0f s: %s", now - self._window, ", ".join(counts))
        self._window, self._logged, self._unlogged = now, 0, dict.fromkeys(KINDS, 0)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:  # once only: its sockets are closed and unregistered already
            return
        conn.closed = True
        if self._conns.pop(id(conn), None) is not None:
            source = conn.peer.rsplit(":", 1)[0]
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
        for sock in (conn.client, conn.store):
            if sock is not None:
                self._watch(sock, 0, (conn, ""))
                sock.close()

    def close(self) -> None:
        """Stop accepting and close every connection (within a few seconds)."""
        self._stop.set()
        self._thread.join(timeout=5)


def connection_cap(max_connections: int) -> int:
    """``max_connections`` cut to what a :data:`DESCRIPTOR_SHARE` of the descriptors left now
    pays for at :data:`DESCRIPTORS_PER_CONNECTION` each (at least :data:`MIN_CONNECTIONS`)."""
    paid = free_descriptors() // DESCRIPTOR_SHARE // DESCRIPTORS_PER_CONNECTION
    return min(max_connections, max(MIN_CONNECTIONS, paid))


def host_store(
    public: tuple[str, int], timeout_s: float, **options: Any
) -> tuple[dist.TCPStore, RendezvousGuard]:
    """c10d's TCPStore (classic backend) on a private loopback port, and the guard on ``public``
    in front of it (``options``: the guard's), bound before the store exists, so a taken port
    fails first (OSError); RuntimeError when the store cannot start (the guard closed again).
    The store's server is handed the bound listening socket: on its own it listens on every
    address."""
    private = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        private.bind(("127.0.0.1", 0))
        private.listen(128)
        guard = RendezvousGuard(public, private.getsockname()[:2], **options)
    except OSError:
        private.close()
        raise
    try:  # the store's server takes the listening socket over
        store = dist.TCPStore(
            guard.upstream[0], guard.upstream[1], None, True, timeout=timedelta(seconds=timeout_s),
            wait_for_workers=False, use_libuv=False, master_listen_fd=private.detach(),
        )  # fmt: skip
    except BaseException:
        guard.close()
        raise
    return store, guard


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
