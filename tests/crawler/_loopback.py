"""Loopback test kit for crawler tests: real aiohttp servers, fast settings, an in-memory sink."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from crystalline.crawler.crawl import Crawler, CrawlSummary
from crystalline.crawler.frontier import Frontier
from crystalline.crawler.settings import CrawlSettings
from crystalline.documents import Document


class MemorySink:
    """A DocumentSink that keeps what it is given (the tests' stand-in for the Spool)."""

    def __init__(self) -> None:
        self.docs: list[Document] = []

    async def submit(self, doc: Document) -> None:
        self.docs.append(doc)

    def sources(self) -> list[str]:
        return [d.source for d in self.docs]


class Hits:
    """Server-side log of requests: path and arrival time (monotonic)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float]] = []

    def times(self, predicate: Callable[[str], bool] = lambda p: True) -> list[float]:
        return [t for p, t in self.log if predicate(p)]

    def paths(self) -> list[str]:
        return [p for p, _ in self.log]

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.log if p == path)


@asynccontextmanager
async def serve(
    routes: list[web.RouteDef], host: str = "127.0.0.1", hits: Hits | None = None
) -> AsyncIterator[str]:
    """Run an aiohttp app with ``routes`` on an ephemeral port; yield its base URL."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if hits is not None:
            hits.log.append((request.path_qs, time.monotonic()))
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class WildcardResolver(AbstractResolver):
    """Wildcard DNS on loopback: every name under ``suffix`` resolves to ``address``, so one local
    server answers as any number of hosts (``h1.wild.test``, ``h2.wild.test``, ...)."""

    def __init__(self, suffix: str, address: str = "127.0.0.1") -> None:
        self.suffix = suffix
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if not host.endswith("." + self.suffix):
            raise OSError(f"unknown host {host}")
        return [
            ResolveResult(
                hostname=host, host=self.address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


def fast_settings(tmp_path: Path, **changes: Any) -> CrawlSettings:
    """Settings for loopback tests: no politeness delay, short timeouts and backoffs, no sitemaps."""
    base = CrawlSettings(
        data_dir=tmp_path / "crawl",
        min_delay=0.0,
        autothrottle=False,
        allow_private_addresses=True,
        per_host_concurrency=4,
        connect_timeout=2.0,
        read_timeout=2.0,
        total_timeout=5.0,
        max_retries=2,
        backoff_base=0.05,
        robots_error_ttl=0.2,
        stop_grace=2.0,
        sitemaps=False,  # no /sitemap.xml request in tests that count requests (see test_sitemaps.py)
    )
    return replace(base, **changes)


async def crawl(
    settings: CrawlSettings, start: list[str], sink: MemorySink | None = None, timeout: float = 60.0
) -> tuple[CrawlSummary, MemorySink, Crawler]:
    """Crawl from ``start`` to the end (with a deadline); the crawler comes back closed."""
    sink = sink if sink is not None else MemorySink()
    crawler = Crawler(settings, sink)
    try:
        for url in start:
            crawler.add_url(url)
        summary = await asyncio.wait_for(crawler.run(asyncio.Event()), timeout)
    finally:
        crawler.close()
    return summary, sink, crawler


def html(body: str, status: int = 200, charset: str = "utf-8") -> web.Response:
    return web.Response(text=f"<html><body>{body}</body></html>", status=status, content_type="text/html",
                        charset=charset)  # fmt: skip


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def url_state(settings: CrawlSettings, url: str) -> tuple[str, int | None, str | None] | None:
    """(state, status, error) of ``url`` in the frontier of ``settings`` (after a crawl)."""
    frontier = Frontier(settings.frontier_path)
    try:
        return frontier.state_of(url)
    finally:
        frontier.close()


WORDS = ["river", "stone", "lantern", "harbour", "meadow", "copper", "violin", "orchard", "thunder",
         "glacier",
         "parrot", "velvet", "market", "island", "ladder", "window", "garden", "kettle", "mirror", "candle",
         "pencil", "forest", "valley", "bridge", "castle", "engine", "summer", "winter", "autumn", "silver",
         "golden", "quiet", "sudden", "gentle", "bright", "narrow", "ancient", "modern", "early", "late",
         "walked", "carried", "opened", "painted", "counted", "followed", "gathered", "noticed"]  # fmt: skip
STOP = ["the", "of", "and", "to", "in", "a", "is", "that", "it", "was", "for", "on", "with", "as", "by"]


def prose(seed: int, words: int = 120) -> str:
    """English-looking text, different for each seed (ingest's quality rules pass it)."""
    rng = random.Random(seed)
    out = [rng.choice(STOP) if rng.random() < 0.4 else rng.choice(WORDS) for _ in range(words)]
    return " ".join(out).capitalize() + "."
