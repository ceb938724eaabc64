"""A bound on the dashboard's TCP connections: how many, and how long a request's head may take.

aiohttp has no deadline for a request's head (its keep-alive timeout closes an idle connection
after a response; before the first request only in newer releases) and no cap on connections:
300 connections each sending half a request held 300 of the supervisor's descriptors for
minutes. ``GatedRunner`` is an ``AppRunner`` whose sites accept through a ``ConnectionGate``:

- at ``limit`` open connections a new one takes the place of the keep-alive connection that is
  idle longest (no request in progress, so never an event stream: its request lasts; and waiting
  for its next request's head, not holding one its handler has yet to start; idle since its
  last request began), which is closed, as servers free a reusable connection; only when no
  connection is idle (every one is in a request, or has not sent its first) is the new one
  answered ``503`` in one line and closed at once;
- a connection whose first request has not reached the application ``head_s`` after it was
  accepted is closed unanswered (checked every ``SWEEP_S``, so within ``head_s + SWEEP_S``);
  after a response, aiohttp's keep-alive timeout (the runner's ``keepalive_timeout``, ``head_s``
  unless given) bounds the wait for the next request's head. (aiohttp 3.14 arms that timer at
  the connection's start too, so there it closes a late first head as the sweep would; aiohttp
  3.13.0 and older do not, and the sweep is what closes it; the tests run both ways.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

SWEEP_S = 0.5
REFUSAL = b"too many connections to this dashboard\n"
_REFUSAL_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(REFUSAL), REFUSAL)
)


class _Refusal(asyncio.Protocol):
    """A connection past the cap: the 503 line written, then closed (nothing it sends is read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_REFUSAL_RESPONSE)
        transport.close()


class ConnectionGate:
    """The listener's protocol factory in front of aiohttp's ``Server`` (see the module)."""

    def __init__(self, server: web.Server, limit: int, head_s: float) -> None:
        self._server = server
        self.limit = limit
        self.head_s = head_s
        self.refused = 0  # connections answered 503 (at the cap, none idle)
        self.evicted = 0  # idle keep-alive connections closed for a new one (at the cap)
        self._accepted = 0  # made by this factory, not yet told to aiohttp's Server (same loop turn)
        self._waiting_head: dict[RequestHandler, float] = {}  # accepted at (loop time), no request yet
        self._last_request: dict[RequestHandler, float] = {}  # its last request began at (loop time)
        self._sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        if self._open() >= self.limit and not self._evict_idle():
            self.refused += 1
            return _Refusal()
        # the transport tells the Server of its connection at the loop's next turn: counted here
        # until then (a burst of accepts runs in one turn)
        self._accepted += 1
        loop.call_soon(self._made)
        handler = self._server()
        self._waiting_head[handler] = loop.time()
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_S, self._close_late_heads)
        return handler

    @property
    def connections(self) -> list[RequestHandler]:
        """aiohttp's ``Server``'s open connections (the gate stands in for it as ``runner.server``)."""
        return self._server.connections

    def started(self, handler: Any) -> None:
        """A request of ``handler``'s connection reached the application: its head came in time."""
        self._waiting_head.pop(handler, None)
        self._last_request[handler] = asyncio.get_running_loop().time()
        if len(self._last_request) > 2 * self.limit:  # closed connections' entries: bounded
            self._forget_closed()

    def _open(self) -> int:
        """Open connections: the Server's (less those closed here this loop turn: a transport of
        None, gone from the Server at the next) and those it has not been told of yet."""
        return sum(h.transport is not None for h in self._server.connections) + self._accepted

    def _forget_closed(self) -> None:
        open_now = {h for h in self._server.connections if h.transport is not None}
        for handler in [h for h in self._last_request if h not in open_now]:
            del self._last_request[handler]

    def _evict_idle(self) -> bool:
        """Close the keep-alive connection whose last request began longest ago and has ended;
        False when there is none (aiohttp's ``_request_in_progress`` flag, from 3.11 on: without
        it no connection counts as idle and the cap refuses as it did before eviction)."""
        self._forget_closed()
        idle = [h for h in self._last_request if _idle(h)]
        if not idle:
            return False
        victim = min(idle, key=self._last_request.__getitem__)
        del self._last_request[victim]
        victim.force_close()
        self.evicted += 1
        return True

    def _made(self) -> None:
        self._accepted -= 1

    def _close_late_heads(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        open_now = set(self._server.connections)
        for handler, since in list(self._waiting_head.items()):
            if handler not in open_now or handler.transport is None:  # gone by itself
                del self._waiting_head[handler]
            elif now - since >= self.head_s:
                del self._waiting_head[handler]
                handler.force_close()
        self._sweep = loop.call_later(SWEEP_S, self._close_late_heads) if self._waiting_head else None


def _idle(handler: RequestHandler) -> bool:
    """No request in progress and parked for the next one, aiohttp's own keep-alive test: a head
    that arrived (parsed, or pipelined) resolves ``_waiter`` a loop turn or two before its
    handler sets ``_request_in_progress``, so such a connection is busy. Without either
    attribute (an aiohttp without them) a connection counts as busy."""
    if getattr(handler, "_request_in_progress", True):
        return False
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done()


class GatedRunner(web.AppRunner):
    """An ``AppRunner`` whose sites accept through a ``ConnectionGate`` (``gate``, made at the
    first site's start); aiohttp's own ``Server`` still serves, and is shut down, as ever."""

    def __init__(self, app: web.Application, *, limit: int, head_s: float, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", head_s)
        super().__init__(app, **kwargs)
        self._limit = limit
        self._head_s = head_s
        self.gate: ConnectionGate | None = None

    @property
    def server(self) -> Any:  # the sites' protocol factory
        inner = super().server
        if inner is None:
            return None
        if self.gate is None:
            self.gate = ConnectionGate(inner, self._limit, self._head_s)
        return self.gate
