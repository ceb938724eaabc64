"""Sitemaps seed the frontier: robots.txt Sitemap: lines and /sitemap.xml, indexes, gzip, feeds,
caps on size and count, lastmod making a stored page due."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
from pathlib import Path

from _loopback import Hits, crawl, fast_settings, html, serve
from aiohttp import web

from crystalline.crawler import sitemaps
from crystalline.crawler.frontier import QUEUED, Frontier

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def urlset(urls: list[str], lastmod: str = "") -> bytes:
    mod = f"<lastmod>{lastmod}</lastmod>" if lastmod else ""
    items = "".join(f"<url><loc>{u}</loc>{mod}<changefreq>weekly</changefreq></url>" for u in urls)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset {NS}>{items}</urlset>'.encode()


def test_pages_listed_only_in_sitemaps_are_found(tmp_path: Path) -> None:
    hits = Hits()

    async def main() -> None:
        routes: list[web.RouteDef] = []

        async def robots_txt(request: web.Request) -> web.Response:
            return web.Response(text=f"User-agent: *\nAllow: /\nSitemap: {base}/maps/index.xml\n")

        async def index(request: web.Request) -> web.Response:
            body = f"<sitemapindex {NS}><sitemap><loc>{base}/maps/pages.xml.gz</loc></sitemap></sitemapindex>"
            return web.Response(body=body.encode(), content_type="application/xml")

        async def pages_gz(request: web.Request) -> web.Response:
            body = gzip.compress(urlset([f"{base}/hidden/{i}" for i in range(5)]))
            return web.Response(body=body, content_type="application/gzip")

        async def default_map(request: web.Request) -> web.Response:  # /sitemap.xml: a feed
            entry = f'<entry><link href="{base}/news/1"/></entry>'
            feed = f'<feed xmlns="http://www.w3.org/2005/Atom">{entry}</feed>'
            return web.Response(text=feed, content_type="application/atom+xml")

        async def page(request: web.Request) -> web.Response:
            return html(f"a page nobody links to: {request.path}")

        async def root(request: web.Request) -> web.Response:
            return html("the home page links to nothing")

        routes = [web.get("/robots.txt", robots_txt), web.get("/maps/index.xml", index),
                  web.get("/maps/pages.xml.gz", pages_gz), web.get("/sitemap.xml", default_map),
                  web.get("/hidden/{i}", page), web.get("/news/{i}", page), web.get("/", root)]  # fmt: skip
        async with serve(routes, hits=hits) as base:
            summary, sink, _crawler = await crawl(fast_settings(tmp_path, sitemaps=True), [base + "/"])
        found = sorted(sink.sources())
        assert found == sorted([base + "/", base + "/news/1", *(f"{base}/hidden/{i}" for i in range(5))])
        assert summary.stored == summary.stored_total == 7  # sitemaps are no pages
        assert summary.failed == 0

    asyncio.run(main())


def test_a_gzip_bomb_and_a_100k_url_sitemap_are_capped(tmp_path: Path) -> None:
    bomb = gzip.compress(urlset(["http://x/first"])[: -len("</urlset>")] + b" " * (200 * 1024 * 1024))
    assert len(bomb) < 300 * 1024  # 200 MiB of inflation in a small body
    parsed = sitemaps.parse(bomb, max_bytes=1024 * 1024, max_urls=50_000)
    assert [e.loc for e in parsed.entries] == ["http://x/first"] and "bytes" in parsed.truncated

    async def main() -> None:
        big = urlset([f"/p/{i}" for i in range(100_000)])  # relative: filled in per request

        async def sitemap(request: web.Request) -> web.Response:
            base = f"http://{request.host}"
            return web.Response(
                body=big.replace(b"<loc>/", f"<loc>{base}/".encode()), content_type="text/xml"
            )

        async def bomb_map(request: web.Request) -> web.Response:
            return web.Response(body=bomb, content_type="application/x-gzip")

        async def robots_txt(request: web.Request) -> web.Response:
            return web.Response(text=f"Sitemap: http://{request.host}/bomb.xml.gz\n")

        async def page(request: web.Request) -> web.Response:
            return html(f"page {request.path}")

        routes = [web.get("/sitemap.xml", sitemap), web.get("/bomb.xml.gz", bomb_map),
                  web.get("/robots.txt", robots_txt), web.get("/p/{i}", page),
                  web.get("/", page)]  # fmt: skip
        settings = fast_settings(tmp_path, sitemaps=True, sitemap_max_bytes=8 * 1024 * 1024, max_pages=3,
                                 per_host_concurrency=1, concurrency=1)  # fmt: skip
        async with serve(routes) as base:
            summary, _, _ = await crawl(settings, [base + "/"], timeout=120)
        assert summary.reason == "max pages"
        frontier = Frontier(settings.frontier_path)
        try:
            queued = frontier.counts[QUEUED]
            listed = frontier._db.execute(
                "SELECT COUNT(*) FROM urls WHERE url LIKE ?", (base + "/p/%",)
            ).fetchone()[0]
        finally:
            frontier.close()
        assert listed == 50_000  # sitemap_max_urls: the first 50,000 of 100,000
        assert queued >= 50_000 - 3

    asyncio.run(main())


def test_a_sitemap_lastmod_makes_a_stored_page_due(tmp_path: Path) -> None:
    hits = Hits()
    lastmod = {"value": "2001-01-01"}

    async def main() -> None:
        async def sitemap(request: web.Request) -> web.Response:
            body = urlset([f"http://{request.host}/a", f"http://{request.host}/b"], lastmod["value"])
            return web.Response(body=body, content_type="application/xml")

        async def page(request: web.Request) -> web.Response:
            return html(f"page {request.path}")

        routes = [web.get("/sitemap.xml", sitemap), web.get("/{name}", page)]
        settings = fast_settings(tmp_path, sitemaps=True, min_revisit=3600.0)
        async with serve(routes, hits=hits) as base:
            await crawl(settings, [base + "/a"])
            with sqlite3.connect(settings.frontier_path) as db:
                # a page's first interval is the sitemap's changefreq
                assert db.execute("SELECT interval FROM urls WHERE url = ?", (base + "/b",)).fetchone() == (
                    7 * 86400.0,
                )
                db.execute(
                    "UPDATE urls SET next_visit = 0 WHERE url LIKE '%sitemap.xml'"
                )  # the sitemap is due
            lastmod["value"] = "2100-01-01"  # /a and /b changed after they were fetched
            second, _, _ = await crawl(settings, [base + "/a"])
        assert (second.revisits, second.changed) == (3, 1)  # the sitemap, then /a and /b which it made due
        assert hits.count("/a") == 2 and hits.count("/b") == 2

    asyncio.run(main())


def test_a_feed_a_page_announces_is_read_like_a_sitemap(tmp_path: Path) -> None:
    async def main() -> None:
        async def home(request: web.Request) -> web.Response:
            head = '<link rel="alternate" type="application/rss+xml" href="/feed.xml">'
            return web.Response(
                text=f"<html><head>{head}</head><body>home</body></html>", content_type="text/html"
            )

        async def feed(request: web.Request) -> web.Response:
            when = "<pubDate>Mon, 30 Nov 2026 01:00:00 GMT</pubDate>"
            items = "".join(
                f"<item><link>http://{request.host}/news/{i}</link>{when}</item>" for i in range(3)
            )
            return web.Response(
                text=f"<rss><channel>{items}</channel></rss>", content_type="application/rss+xml"
            )

        async def news(request: web.Request) -> web.Response:
            return html(f"news story {request.match_info['i']}")

        routes = [web.get("/", home), web.get("/feed.xml", feed), web.get("/news/{i}", news)]
        async with serve(routes) as base:
            summary, sink, _ = await crawl(fast_settings(tmp_path, sitemaps=True), [base + "/"])
        assert sorted(sink.sources()) == [base + "/", *(f"{base}/news/{i}" for i in range(3))]
        assert summary.failed == 0

    asyncio.run(main())
