"""SSRF: a crawl that starts at a public-looking host never reaches loopback, link-local or
private addresses, nor non-http(s) schemes, by link or by redirect, and logs each refusal.

The "public" host is a name the test's resolver maps to 127.0.0.1 (and that the settings trust);
the "internal" server on 127.0.0.2 records every request it gets, and must get none.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from _hostile_servers import MapResolver, MemorySink, serve
from aiohttp import web

from crystalline.crawler.crawl import Crawler
from crystalline.crawler.frontier import Frontier
from crystalline.crawler.settings import CrawlSettings
from crystalline.crawler.urls import UrlPolicy, is_private_host

PUBLIC = "www.public-site.test"
INTERNAL_NAME = "intranet.public-site.test"  # in scope, but resolves to 127.0.0.2


def _settings(tmp_path: Path) -> CrawlSettings:
    return CrawlSettings(
        data_dir=tmp_path / "crawl",
        allowed_domains=("public-site.test",),
        trusted_hosts=(PUBLIC,),
        min_delay=0.0,
        autothrottle=False,
        connect_timeout=2.0,
        read_timeout=2.0,
        total_timeout=5.0,
        max_retries=1,
        backoff_base=0.05,
        robots_error_ttl=0.2,
    )


@pytest.mark.timeout(120)
def test_public_start_never_reaches_private_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    internal_hits: list[str] = []
    public_hits: list[str] = []

    async def main() -> tuple[MemorySink, int, int]:
        async def secret(request: web.Request) -> web.Response:
            return web.Response(text="<html><body>secret</body></html>", content_type="text/html")

        async with serve([web.get("/{tail:.*}", secret)], "127.0.0.2", internal_hits) as iport:
            targets = [
                f"http://127.0.0.2:{iport}/secret",
                f"http://{INTERNAL_NAME}:{iport}/dns",
                f"http://localhost:{iport}/localhost",
                f"http://[::1]:{iport}/v6",
                f"http://2130706433:{iport}/decimal",
                f"http://127.1:{iport}/short",
                f"http://0x7f.0.0.2:{iport}/hex",
                "http://169.254.169.254/latest/meta-data/",
                "http://10.0.0.1/admin",
                "http://192.168.1.1/",
                "file:///etc/passwd",
                "ftp://ftp.public-site.test/pub/",
                "gopher://public-site.test/",
            ]
            redirects = {f"/go/{i}": t for i, t in enumerate(targets)}

            async def home(request: web.Request) -> web.Response:
                links = "".join(f'<a href="{t}">t</a>' for t in targets)
                links += "".join(f'<a href="{r}">r</a>' for r in redirects)
                return web.Response(text=f"<html><body>{links}<a href='/ok'>ok</a></body></html>",
                                    content_type="text/html")  # fmt: skip

            async def ok(request: web.Request) -> web.Response:
                return web.Response(text="<html><body>fine</body></html>", content_type="text/html")

            async def redirect(request: web.Request) -> web.Response:
                raise web.HTTPFound(redirects[request.path])

            routes = [web.get("/", home), web.get("/ok", ok), web.get("/go/{n}", redirect)]
            async with serve(routes, "127.0.0.1", public_hits) as pport:
                resolver = MapResolver({PUBLIC: "127.0.0.1", INTERNAL_NAME: "127.0.0.2"})
                sink = MemorySink()
                crawler = Crawler(_settings(tmp_path), sink, resolver=resolver)
                try:
                    crawler.add_url(f"http://{PUBLIC}:{pport}/")
                    summary = await asyncio.wait_for(crawler.run(asyncio.Event()), 90)
                finally:
                    crawler.close()
                assert summary.reason == "frontier empty"
                return sink, pport, iport

    with caplog.at_level(logging.INFO, logger="crystalline.crawler"):
        sink, pport, iport = asyncio.run(main())

    assert internal_hits == []  # nothing reached the internal server, by any route
    assert sorted(sink.sources()) == [f"http://{PUBLIC}:{pport}/", f"http://{PUBLIC}:{pport}/ok"]
    assert len([p for p in public_hits if p.startswith("/go/")]) == 13  # each redirect asked once
    messages = [r.getMessage() for r in caplog.records]
    skipped_links = [m for m in messages if m.startswith("skipped link")]
    skipped_redirects = [m for m in messages if m.startswith("skipped redirect")]
    # every target but the in-scope DNS name is refused by the URL policy, as link and as redirect
    for needle in ("127.0.0.2", "localhost", "[::1]", "2130706433", "127.1", "0x7f", "169.254.169.254",
                   "10.0.0.1", "192.168.1.1", "file:///etc/passwd", "ftp://", "gopher://"):  # fmt: skip
        assert any(needle in m for m in skipped_links), needle
        assert any(needle in m for m in skipped_redirects), needle
    # the name that resolves to a private address is refused at connect time, never retried
    frontier = Frontier(tmp_path / "crawl" / "frontier.sqlite")
    try:
        dns_state = frontier.state_of(f"http://{INTERNAL_NAME}:{iport}/dns")
    finally:
        frontier.close()
    assert dns_state is not None
    state, _status, error = dns_state
    assert state == "skipped" and error is not None and "resolves only to private addresses" in error
    assert any(f"skipped http://{INTERNAL_NAME}:{iport}/dns" in m for m in messages)


def test_private_address_forms_are_recognised() -> None:
    private = ["127.0.0.1", "127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "localhost.", "127.0.0.1."]
    private += ["[::1]", "::ffff:127.0.0.1", "169.254.169.254", "10.0.0.1", "0.0.0.0", "100.64.0.1"]
    for host in private:
        assert is_private_host(host), host
    for host in ("example.org", "93.184.216.34", "8.8.8.8", "0x7f.example.org", "1e100.net"):
        assert not is_private_host(host), host


def test_allow_private_addresses_opens_loopback_for_tests(tmp_path: Path) -> None:
    closed = UrlPolicy(CrawlSettings(data_dir=tmp_path))
    opened = UrlPolicy(CrawlSettings(data_dir=tmp_path, allow_private_addresses=True))
    assert "private or loopback" in (closed.check_fetch("http://127.0.0.1:8080/") or "")
    assert opened.check_fetch("http://127.0.0.1:8080/") is None
    assert "scheme" in (opened.check_fetch("file:///etc/passwd") or "")  # schemes stay closed
