"""Loopback servers for the hostile crawler tests: aiohttp apps, a raw TCP server that writes
whatever bytes a test wants, a name->address resolver, and an in-memory sink."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from crystalline.documents import Document


class MemorySink:
    """A DocumentSink that keeps what it is given."""

    def __init__(self) -> None:
        self.docs: list[Document] = []

    async def submit(self, doc: Document) -> None:
        self.docs.append(doc)

    def sources(self) -> list[str]:
        return [d.source for d in self.docs]


class MapResolver(AbstractResolver):
    """Resolves the names in ``table`` to the given loopback addresses; anything else fails."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        address = self.table[host]
        return [
            ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


@asynccontextmanager
async def serve(
    routes: list[web.RouteDef], host: str = "127.0.0.1", hits: list[str] | None = None
) -> AsyncIterator[int]:
    """Run an aiohttp app on ``host``; yield its port. ``hits`` records every request path."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if hits is not None:
            hits.append(request.path_qs)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


RawHandler = Callable[[str, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve_raw(handler: RawHandler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A TCP server that reads the request line and headers, then lets ``handler(path, writer)``
    write raw bytes (malformed responses aiohttp's server would never produce)."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            await handler(parts[1] if len(parts) > 1 else "/", writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(on_client, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
