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
from crystalline.crawler.frontier import DROP_LISTED, QUEUED, Frontier, NewUrl

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


def test_a_feed_found_deep_keeps_the_depth_count(tmp_path: Path) -> None:
    """A feed on a page at depth 2 is queued at depth 2, its items at 3; with max-depth 3 the
    items' own links (depth 4) are not followed, as they would be had the feed restarted at 0."""
    hits = Hits()

    async def main() -> None:
        async def chain(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            head = '<link rel="alternate" type="application/rss+xml" href="/feed.xml">' if i == 2 else ""
            link = f'<a href="/d/{i + 1}">next</a>' if i < 2 else ""
            return web.Response(text=f"<html><head>{head}</head><body>page {i} {link}</body></html>",
                                content_type="text/html")  # fmt: skip

        async def feed(request: web.Request) -> web.Response:
            items = "".join(f"<item><link>http://{request.host}/news/{i}</link></item>" for i in range(2))
            return web.Response(
                text=f"<rss><channel>{items}</channel></rss>", content_type="application/rss+xml"
            )

        async def news(request: web.Request) -> web.Response:
            return html(
                f'story {request.match_info["i"]} <a href="/beyond/{request.match_info["i"]}">more</a>'
            )

        routes = [web.get("/d/{i}", chain), web.get("/feed.xml", feed), web.get("/news/{i}", news),
                  web.get("/beyond/{i}", news)]  # fmt: skip
        async with serve(routes, hits=hits) as base:
            settings = fast_settings(tmp_path, sitemaps=True, max_depth=3)
            summary, sink, _ = await crawl(settings, [base + "/d/0"])
        assert sorted(sink.sources()) == sorted([*(f"{base}/d/{i}" for i in range(3)), base + "/news/0",
                                                 base + "/news/1"])  # fmt: skip
        assert not [p for p in hits.paths() if p.startswith("/beyond/")]
        with sqlite3.connect(settings.frontier_path) as db:
            depths = dict(db.execute("SELECT url, depth FROM urls"))
        assert depths[base + "/feed.xml"] == 2
        assert (depths[base + "/news/0"], depths[base + "/news/1"]) == (3, 3)
        assert summary.failed == 0

    asyncio.run(main())


def test_sitemaps_and_feeds_queue_at_most_the_daily_budget_per_host(tmp_path: Path) -> None:
    async def main() -> None:
        async def robots_txt(request: web.Request) -> web.Response:
            return web.Response(
                text=f"User-agent: *\nAllow: /\nSitemap: {base}/a.xml\nSitemap: {base}/b.xml\n"
            )

        async def listing(request: web.Request) -> web.Response:
            name = request.path.strip("/").split(".")[0]
            return web.Response(
                body=urlset([f"{base}/{name}/{i}" for i in range(5)]), content_type="application/xml"
            )

        async def page(request: web.Request) -> web.Response:
            return html(f"listed page {request.path}")

        routes = [web.get("/robots.txt", robots_txt), web.get("/a.xml", listing), web.get("/b.xml", listing),
                  web.get("/sitemap.xml", listing), web.get("/a/{i}", page), web.get("/b/{i}", page),
                  web.get("/sitemap/{i}", page), web.get("/", page)]  # fmt: skip
        async with serve(routes) as base:
            settings = fast_settings(tmp_path, sitemaps=True, max_listed_per_host_per_day=6)
            summary, sink, _ = await crawl(settings, [base + "/"])
        listed = [u for u in sink.sources() if u != base + "/"]
        assert len(listed) == 6  # of the 15 the three sitemaps list
        assert summary.dropped["listed_per_host_per_day"] == 9
        assert "9 listed per host per day" in summary.line()

    asyncio.run(main())


def test_the_listing_budget_is_per_origin_and_day_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "frontier.sqlite"

    def listed(origin: str, names: range) -> list[NewUrl]:
        return [NewUrl(f"{origin}/p/{i}", origin, 1, listed=True) for i in names]

    frontier = Frontier(path, max_listed_per_host_per_day=3)
    assert frontier.add(listed("http://a", range(2))) == 2
    assert frontier.add(listed("http://b", range(5))) == 3  # another origin: its own budget
    frontier.close()
    frontier = Frontier(path, max_listed_per_host_per_day=3)  # a restart keeps the day's count
    assert frontier.add(listed("http://a", range(2, 6))) == 1
    assert frontier.add([NewUrl("http://a/linked", "http://a", 1)]) == 1  # a page's link: no budget
    assert frontier.dropped[DROP_LISTED] == 2 + 3
    assert frontier.add(listed("http://a", range(2))) == 0  # known URLs are not drops
    assert frontier.dropped[DROP_LISTED] == 5
    frontier.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE hosts SET listed_day_start = listed_day_start - 86400")
    frontier = Frontier(path, max_listed_per_host_per_day=3)  # a day later: a new budget
    try:
        assert frontier.add(listed("http://a", range(6, 10))) == 3
    finally:
        frontier.close()
