"""Hostile servers against the real crawler on loopback: malformed robots.txt, huge headers,
endless chunked bodies, a trickling body, garbage status lines, pathological URLs. Each URL
ends stored, failed or skipped with a reason, and the crawl ends."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from _hostile_servers import MemorySink, serve, serve_raw
from aiohttp import web

from crystalline.crawler.crawl import Crawler
from crystalline.crawler.frontier import Frontier
from crystalline.crawler.settings import CrawlSettings

PAGE = b"<html><body><p>An ordinary page with ordinary words.</p></body></html>"


def _settings(tmp_path: Path, **changes: object) -> CrawlSettings:
    base = dict(
        data_dir=tmp_path / "crawl",
        allow_private_addresses=True,
        min_delay=0.0,
        autothrottle=False,
        per_host_concurrency=4,
        connect_timeout=2.0,
        read_timeout=2.0,
        total_timeout=4.0,
        max_retries=0,
        robots_error_ttl=0.2,
        max_body_bytes=1_000_000,
    )
    base.update(changes)
    return CrawlSettings(**base)


def _states(settings: CrawlSettings, urls: list[str]) -> dict[str, tuple[str, int | None, str | None]]:
    frontier = Frontier(settings.frontier_path)
    try:
        out = {}
        for url in urls:
            state = frontier.state_of(url)
            assert state is not None, url
            out[url] = state
        return out
    finally:
        frontier.close()


async def _raw(path: str, writer: asyncio.StreamWriter) -> None:
    ok_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
    if path == "/robots.txt":
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    elif path == "/huge-header":
        writer.write(ok_head + b"X-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 5\r\n\r\nhello")
    elif path == "/many-headers":
        writer.write(ok_head + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"\r\n")
    elif path == "/endless-chunked":
        writer.write(ok_head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"<p>" + b"x" * 8000 + b"</p>"
        while True:  # until the client hangs up
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    elif path == "/trickle":
        writer.write(ok_head + b"Content-Length: 100000\r\n\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.5)
    elif path == "/garbage-status":
        writer.write(b"HTTP/9.9 banana\r\n\r\n" + random.Random(1).randbytes(3000))
    elif path == "/bad-chunks":
        writer.write(ok_head + b"Transfer-Encoding: chunked\r\n\r\nzzzz\r\nnot hex\r\n")
    elif path == "/lying-length":
        writer.write(ok_head + b"Content-Length: 999999\r\n\r\n" + PAGE)
    elif path == "/no-headers-end":
        writer.write(ok_head)
        while True:
            writer.write(b"X-More: " + b"b" * 100 + b"\r\n")
            await writer.drain()
    await writer.drain()


@pytest.mark.timeout(120)
def test_hostile_responses_end_failed_and_crawl_finishes(tmp_path: Path) -> None:
    cases = ["/huge-header", "/many-headers", "/endless-chunked", "/trickle", "/garbage-status",
             "/bad-chunks", "/lying-length", "/no-headers-end"]  # fmt: skip
    settings = _settings(tmp_path)

    async def main() -> tuple[list[str], MemorySink]:
        async with serve_raw(_raw, "127.0.0.3") as port:
            urls = [f"http://127.0.0.3:{port}{c}" for c in cases]
            sink = MemorySink()
            crawler = Crawler(settings, sink)
            try:
                for url in urls:
                    crawler.add_url(url)
                summary = await asyncio.wait_for(crawler.run(asyncio.Event()), 90)
            finally:
                crawler.close()
            assert summary.reason == "frontier empty"
            return urls, sink

    urls, sink = asyncio.run(main())
    states = _states(settings, urls)
    assert sink.docs == []  # none of these is a page
    for url, (state, _status, error) in states.items():
        assert state == "failed" and error, (url, state, error)
    assert "exceeds" in (states[urls[2]][2] or "")  # the endless body stops at the cap
    assert "timeout" in (states[urls[3]][2] or "")


@pytest.mark.timeout(120)
def test_malformed_robots_txt_is_parsed_or_ignored(tmp_path: Path) -> None:
    junk = random.Random(3).randbytes(20_000)
    robots = (
        junk
        + b"\nUser-agent *\nDisallow /nocolon\n"
        + b"Disallow: " + b"/" * 100_000 + b"\n"
        + b"Crawl-delay: -5\nCrawl-delay: NaN\nSitemap: file:///etc/passwd\n"
        + b"User-agent: *\r\nDisallow: /private\r\n"
        + b"\x00\xff\xfe" * 1000
        + b"Allow: " + b"*" * 50_000 + b"$\n"
        + b"x" * 600_000  # past the 500 KiB cap: the rest is never read
    )  # fmt: skip
    hits: list[str] = []

    async def main() -> tuple[int, MemorySink]:
        async def robots_txt(request: web.Request) -> web.Response:
            return web.Response(body=robots, content_type="text/plain")

        async def page(request: web.Request) -> web.Response:
            return web.Response(body=PAGE.replace(b"</body>", b'<a href="/private/x">p</a></body>'),
                                content_type="text/html")  # fmt: skip

        routes = [web.get("/robots.txt", robots_txt), web.get("/{tail:.*}", page)]
        async with serve(routes, "127.0.0.1", hits) as port:
            sink = MemorySink()
            crawler = Crawler(_settings(tmp_path), sink)
            try:
                crawler.add_url(f"http://127.0.0.1:{port}/a")
                summary = await asyncio.wait_for(crawler.run(asyncio.Event()), 90)
            finally:
                crawler.close()
            assert summary.reason == "frontier empty"
            return port, sink

    port, sink = asyncio.run(main())
    assert sink.sources() == [f"http://127.0.0.1:{port}/a"]
    assert "/private/x" not in hits  # the one well-formed group still applies
    assert hits.count("/robots.txt") == 1


@pytest.mark.timeout(120)
def test_pathological_urls_are_refused_and_crawl_finishes(tmp_path: Path) -> None:
    hrefs = [
        "/" + "a" * 200_000,
        "/" + "%" * 100_000,
        "/p?" + "%41" * 30_000,
        "/p?" + "%zz%" * 20_000,
        "/" + "a/" * 5_000,
        "/" + "../" * 2_000 + "up",
        "/p?" + "&".join(f"k{i}=v" for i in range(5_000)),
        "/" + "é" * 20_000,
        "/" + "x/y/" * 10,  # repeated segments: a trap
        "http://[" + ":" * 5000 + "]/",
        "http://" + "a." * 20_000 + "test/",
        "http://" + "@" * 20_000 + "127.0.0.1/",
        "/fine",
    ]
    hits: list[str] = []

    async def main() -> tuple[int, MemorySink]:
        async def home(request: web.Request) -> web.Response:
            links = "".join(f'<a href="{h}">l</a>' for h in hrefs)
            return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

        async def any_page(request: web.Request) -> web.Response:
            return web.Response(body=PAGE, content_type="text/html")

        routes = [web.get("/", home), web.get("/{tail:.*}", any_page)]
        async with serve(routes, "127.0.0.1", hits) as port:
            sink = MemorySink()
            crawler = Crawler(_settings(tmp_path), sink)
            try:
                crawler.add_url(f"http://127.0.0.1:{port}/")
                summary = await asyncio.wait_for(crawler.run(asyncio.Event()), 90)
            finally:
                crawler.close()
            assert summary.reason == "frontier empty"
            return port, sink

    port, sink = asyncio.run(main())
    base = f"http://127.0.0.1:{port}"
    assert sorted(sink.sources()) == sorted([f"{base}/", f"{base}/fine", f"{base}/up"])
    assert all(len(h) < 2100 for h in hits)  # no overlong URL was requested
