"""End-to-end crawls against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from _loopback import Hits, MemorySink, crawl, fast_settings, html, serve
from aiohttp import web

from crystalline.crawler.crawl import Crawler
from crystalline.crawler.frontier import TRAP_WINDOW


def _site(n: int) -> list[web.RouteDef]:
    """Pages /p/0 .. /p/{n-1}; each links to the next three (mod n) and to the start."""

    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        links = "".join(f'<a href="/p/{(i + k) % n}">next</a>' for k in (1, 2, 3))
        return html(f"<h1>page {i}</h1>{links}<a href='/p/0#top'>home</a>")

    return [web.get("/p/{i}", page)]


def test_crawls_every_page_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site(40)) as base:
            summary, sink, crawler = await crawl(fast_settings(tmp_path), [base + "/p/0"])
        assert sorted(sink.sources()) == sorted(f"{base}/p/{i}" for i in range(40))
        assert summary.reason == "frontier empty"
        assert summary.stored == 40
        stats = crawler.stats()
        assert (stats["fetched"], stats["queued"], stats["errors"], stats["host_count"]) == (41, 0, 0, 1)
        assert stats["bytes"] == sum(len(d.body) for d in sink.docs)

    asyncio.run(main())


def test_max_depth_limits_hops(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site(40)) as base:
            _, sink, _ = await crawl(fast_settings(tmp_path, max_depth=2), [base + "/p/0"])
        # depth 0: p0; depth 1: p1..p3; depth 2: p2..p6
        assert sorted(sink.sources()) == sorted(f"{base}/p/{i}" for i in range(7))

    asyncio.run(main())


def test_max_pages_counts_across_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site(40)) as base:
            first, sink, _ = await crawl(fast_settings(tmp_path, max_pages=10), [base + "/p/0"])
            assert (first.reason, len(sink.docs)) == ("max pages", 10)
            second, sink2, _ = await crawl(fast_settings(tmp_path, max_pages=25), [base + "/p/0"])
        assert (second.reason, len(sink2.docs), second.stored_total) == ("max pages", 15, 25)
        assert not set(sink.sources()) & set(sink2.sources())  # a resumed crawl refetches nothing

    asyncio.run(main())


def test_scope_allowed_domains_and_per_host_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site(10), host="127.0.0.2") as other:

            async def hub(request: web.Request) -> web.Response:
                return html(f'<a href="{other}/p/0">other host</a><a href="https://example.com/">out</a>')

            async with serve([web.get("/", hub)]) as base:
                settings = fast_settings(tmp_path, allowed_domains=("127.0.0.1", "127.0.0.2"),
                                         max_pages_per_host=4)  # fmt: skip
                _, sink, crawler = await crawl(settings, [base + "/"])
        hosts = [s.split("/")[2] for s in sink.sources()]
        assert hosts.count(other.split("/")[2]) == 4  # the per-host limit
        assert not any("example.com" in s for s in sink.sources())  # out of scope
        assert crawler.stats()["host_count"] == 2

    asyncio.run(main())


def test_default_scope_is_the_start_host(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        async with serve(_site(3), host="127.0.0.2", hits=hits) as other:

            async def hub(request: web.Request) -> web.Response:
                return html(f'<a href="{other}/p/0">other host</a>')

            async with serve([web.get("/", hub)]) as base:
                _, sink, _ = await crawl(fast_settings(tmp_path), [base + "/"])
        assert sink.sources() == [base + "/"]
        assert hits.log == []

    asyncio.run(main())


def test_500_is_retried_a_bounded_number_of_times_and_404_never(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()

        async def start(request: web.Request) -> web.Response:
            return html('<a href="/broken">b</a><a href="/missing">m</a>')

        async def broken(request: web.Request) -> web.Response:
            return web.Response(status=500, text="oops")

        async def missing(request: web.Request) -> web.Response:
            return web.Response(status=404, text="no")

        routes = [web.get("/", start), web.get("/broken", broken), web.get("/missing", missing)]
        async with serve(routes, hits=hits) as base:
            summary, _, crawler = await crawl(fast_settings(tmp_path, max_retries=2), [base + "/"])
        assert hits.count("/broken") == 3  # first try + max_retries
        assert hits.count("/missing") == 1
        assert summary.failed == 2 and summary.retried == 2
        assert crawler.stats()["errors"] == 2
        # status classes of every request: /, three tries of /broken, /missing, robots.txt (404)
        assert crawler.stats()["by_status"] == {"2xx": 1, "4xx": hits.count("/robots.txt") + 1, "5xx": 3}

    asyncio.run(main())


def test_redirects_are_followed_and_loops_end(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()

        async def start(request: web.Request) -> web.Response:
            return html('<a href="/moved">m</a><a href="/loop-a">l</a><a href="/chain/0">c</a>')

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPMovedPermanently("/new-home")

        async def new_home(request: web.Request) -> web.Response:
            return html("arrived")

        async def loop_a(request: web.Request) -> web.Response:
            raise web.HTTPFound("/loop-b")

        async def loop_b(request: web.Request) -> web.Response:
            raise web.HTTPFound("/loop-a")

        async def chain(request: web.Request) -> web.Response:  # an endless chain of fresh URLs
            raise web.HTTPFound(f"/chain/{int(request.match_info['i']) + 1}")

        routes = [web.get("/", start), web.get("/moved", moved), web.get("/new-home", new_home),
                  web.get("/loop-a", loop_a), web.get("/loop-b", loop_b),
                  web.get("/chain/{i}", chain)]  # fmt: skip
        async with serve(routes, hits=hits) as base:
            summary, sink, _ = await crawl(fast_settings(tmp_path, max_redirects=3), [base + "/"])
        assert sorted(sink.sources()) == [base + "/", base + "/new-home"]
        assert hits.count("/loop-a") == 1 and hits.count("/loop-b") == 1
        assert sum(1 for p in hits.paths() if p.startswith("/chain/")) == 4  # 3 redirects followed
        assert summary.reason == "frontier empty"

    asyncio.run(main())


def test_calendar_trap_ends(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()

        async def calendar(request: web.Request) -> web.Response:
            year, month = (int(x) for x in request.query.get("month", "2024-01").split("-"))
            nxt = f"{year + month // 12}-{month % 12 + 1:02d}"
            prv = f"{year - (month == 1)}-{(month - 2) % 12 + 1:02d}"
            day_links = "".join(f'<a href="/day?d={year}-{month:02d}-{d:02d}">{d}</a>' for d in (1, 15))
            return html(f'<a href="/calendar?month={nxt}">next</a><a href="/calendar?month={prv}">prev</a>'
                        + day_links)  # fmt: skip

        async def day(request: web.Request) -> web.Response:
            return html("an empty day")

        routes = [web.get("/calendar", calendar), web.get("/day", day)]
        async with serve(routes, hits=hits) as base:
            settings = fast_settings(tmp_path, max_depth=1000, concurrency=8)
            summary, sink, _ = await crawl(settings, [base + "/calendar"])
        assert summary.reason == "frontier empty"
        calendar_pages = [s for s in sink.sources() if "/calendar" in s]
        # the empty days read the same: their shape is cut after a window of TRAP_WINDOW pages
        # (plus what was in flight); the months, whose text repeats too, count as giving
        # something while they lead to new days, then are cut after their own window
        day_pages = [s for s in sink.sources() if "/day" in s]
        assert len(day_pages) <= TRAP_WINDOW + 8
        assert len(calendar_pages) <= 2 * TRAP_WINDOW + 8
        assert len(hits.log) == len(calendar_pages) + len(day_pages) + 1  # and robots.txt

    asyncio.run(main())


def test_stop_requeues_in_flight_and_a_new_run_resumes(tmp_path: Path) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            if i >= 3:
                await release.wait()
            return html("".join(f'<a href="/s/{i * 2 + k}">x</a>' for k in (1, 2)) if i < 10 else "leaf")

        async with serve([web.get("/s/{i}", slow)]) as base:
            settings = fast_settings(tmp_path, stop_grace=0.2)
            sink = MemorySink()
            crawler = Crawler(settings, sink)
            crawler.add_url(base + "/s/0")
            stop = asyncio.Event()
            run = asyncio.create_task(crawler.run(stop))
            for _ in range(200):
                if crawler.stats()["in_flight"] >= 2:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            summary = await asyncio.wait_for(run, 10)
            assert summary.reason == "stopped"
            assert crawler.stats()["in_flight"] == 0 and crawler.stats()["queued"] > 0
            crawler.close()
            release.set()
            _, sink2, _ = await crawl(settings, [base + "/s/0"])
        stored = sink.sources() + sink2.sources()
        assert sorted(stored) == sorted({f"{base}/s/{i}" for i in range(21)})  # each page exactly once

    asyncio.run(main())


def test_private_addresses_refused_unless_allowed(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, allow_private_addresses=False)
    crawler = Crawler(settings, MemorySink())
    try:
        for url in ("http://127.0.0.1:8080/", "http://localhost/", "http://10.1.2.3/", "ftp://example.com/"):
            try:
                crawler.add_url(url)
            except ValueError as exc:
                assert "cannot crawl" in str(exc) and "\n" not in str(exc)
            else:
                raise AssertionError(f"{url} was accepted")
        assert crawler.add_url("http://example.com/") is True
        assert crawler.add_url("http://EXAMPLE.com:80/#x") is False  # the same URL, canonically
    finally:
        crawler.close()
