"""The bounded frontier end to end (issue 19.7): pages of 10,000 links, thousands of wildcard hosts,
the robots.txt budget, and the caps as `crystalline crawl` and `crystalline run` options."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from _loopback import Hits, MemorySink, WildcardResolver, crawl, fast_settings, html, serve
from aiohttp import web

from crystalline.crawler import command
from crystalline.crawler.crawl import Crawler
from crystalline.crawler.frontier import (
    DROP_FRONTIER_FULL,
    DROP_HOST_FULL,
    DROP_HOST_PAGES,
    DROP_LISTED,
    DROP_PAGE_LINKS,
    DROP_ROBOTS,
    DROP_TRAP,
    Frontier,
    NewUrl,
)
from crystalline.crawler.settings import CrawlSettings
from crystalline.daemon import cli, config

LINKS = 10_000


def _wide_site() -> list[web.RouteDef]:
    """Page n links to 10,000 pages no other page links to: every link is new."""

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return html("".join(f'<a href="/p/{n * LINKS + k}">{k}</a>' for k in range(1, LINKS + 1)))

    return [web.get("/p/{n}", page)]


def _queue_rows(settings: CrawlSettings) -> tuple[int, dict[str, int], dict[str, int]]:
    """All URL rows, queued rows per origin, and the hosts table's queued counts, from disk."""
    frontier = Frontier(settings.frontier_path)
    try:
        db = frontier._db
        rows = db.execute("SELECT COUNT(*) FROM urls").fetchone()[0]
        per_origin = dict(db.execute("SELECT origin, COUNT(*) FROM urls WHERE state = 0 GROUP BY origin"))
        counted = dict(db.execute("SELECT origin, queued FROM hosts WHERE queued > 0"))
    finally:
        frontier.close()
    return rows, per_origin, counted


def test_pages_of_ten_thousand_links_stay_under_the_caps(tmp_path: Path) -> None:
    # the pattern budget is off (the site had word slugs): only the new caps act here
    settings = fast_settings(tmp_path, max_links_per_page=200,
                             max_queued_per_host=500, max_pages=12, concurrency=4)  # fmt: skip

    async def main() -> None:
        async with serve(_wide_site()) as base:
            summary, _, crawler = await crawl(settings, [base + "/p/0"])
        assert (summary.reason, summary.stored) == ("max pages", 12)
        rows, per_origin, counted = _queue_rows(settings)
        assert per_origin == counted  # the incremental per-host count agrees with the rows
        assert sum(per_origin.values()) == summary.queued <= 500
        assert rows == summary.stored_total + summary.queued  # nothing else left a row
        # every link offered was new: it is a row now or it was counted as dropped
        assert rows - 1 + sum(summary.dropped.values()) == LINKS * summary.stored
        assert summary.dropped[DROP_PAGE_LINKS] >= LINKS - 200  # the start page alone
        assert summary.dropped[DROP_HOST_FULL] > 0
        assert "dropped at the frontier's caps" in summary.line()
        stats = crawler.stats()
        assert stats["dropped"] == summary.dropped  # a fresh data dir: this run is all its life
        assert stats["frontier_size"] == rows and stats["caps"]["queued_per_host"] == 500

    asyncio.run(main())


def test_wildcard_hosts_hold_the_total_and_host_caps_and_the_robots_budget(tmp_path: Path) -> None:
    hosts, pages = 300, 20
    robots_asked: list[str] = []

    async def hub(request: web.Request) -> web.Response:
        port = request.url.port
        return html("".join(f'<a href="http://h{i}.wild.test:{port}/p/{j}">x</a>'
                            for i in range(hosts) for j in range(pages)))  # fmt: skip

    async def robots(request: web.Request) -> web.Response:
        robots_asked.append(request.host)
        return web.Response(status=404, text="none")

    async def leaf(request: web.Request) -> web.Response:
        if request.host.startswith("hub."):
            return await hub(request)
        return html("a leaf")

    settings = fast_settings(tmp_path, allowed_domains=("wild.test",),
                             max_links_per_page=0, max_queued_per_host=5, max_queued=500, robots_per_minute=6,
                             concurrency=8)  # fmt: skip

    async def main() -> None:
        routes = [web.get("/robots.txt", robots), web.get("/", leaf), web.get("/p/{j}", leaf)]
        async with serve(routes) as base:
            port = base.rsplit(":", 1)[1]
            sink = MemorySink()
            crawler = Crawler(settings, sink, resolver=WildcardResolver("wild.test"))
            crawler.add_url(f"http://hub.wild.test:{port}/")
            stop = asyncio.Event()
            started = time.monotonic()
            run = asyncio.create_task(crawler.run(stop))
            # the hub and the 5 hosts the budget's first minute opens, 5 pages each (their host cap)
            for _ in range(1500):
                if len(sink.docs) >= 1 + 5 * 5 and crawler.stats()["robots_deferred"] > 0:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            summary = await asyncio.wait_for(run, 30)
            elapsed = time.monotonic() - started
            crawler.close()
        budget = 6 * (1 + int(elapsed // 60))  # at most 6 in any minute
        assert len(robots_asked) <= budget and crawler.robots.fetches == len(robots_asked)
        fetched_hosts = {d.source.split("/")[2] for d in sink.docs}
        assert fetched_hosts <= set(robots_asked)  # no host got a page before its robots.txt
        assert len(sink.docs) >= 26 and summary.robots_deferred > 0
        # the hub offered 6,000 links: 5 kept for each of the first 100 hosts (500 in all), 15 more
        # of each of those dropped at the host cap, all 20 of each later host at the total cap
        assert summary.dropped == {DROP_PAGE_LINKS: 0, DROP_HOST_FULL: 100 * 15, DROP_FRONTIER_FULL: 200 * 20,
                                   DROP_TRAP: 0, DROP_HOST_PAGES: 0, DROP_ROBOTS: 0,
                                   DROP_LISTED: 0}  # fmt: skip
        _, per_origin, counted = _queue_rows(settings)
        assert per_origin == counted and max(per_origin.values()) <= 5 and sum(per_origin.values()) <= 500
        assert "waited" in summary.line() and "robots.txt budget" in summary.line()

    asyncio.run(main())


def test_crawl_command_takes_the_caps_and_reports_the_drops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = command.build_parser()

    async def main() -> int:
        async with serve(_wide_site()) as base:
            args = parser.parse_args(["--start-url", base + "/p/0", "--data-dir", str(tmp_path / "d"),
                                      "--min-delay", "0", "--max-pages", "3", "--allow-private-addresses",
                                      "--max-links-per-page", "50", "--max-queued-per-host", "80",
                                      "--max-queued", "1000", "--robots-per-minute", "30"])  # fmt: skip
            return await asyncio.to_thread(command.run_crawl_command, args)

    assert asyncio.run(main()) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # page 0 kept 50 of its 10,000 links (the page cap); pages 1 and 2 filled the host's queue to
    # 80 again after each took its place in flight; every other link was dropped
    assert "3 pages stored" in line and "80 URLs queued" in line
    assert f"{3 * LINKS - 82} dropped at the frontier's caps ({LINKS - 50} links per page" in line
    settings = command.settings_from_args(
        parser.parse_args(["--start-url", "http://x/", "--max-queued", "0"])
    )
    assert (settings.max_queued, settings.max_links_per_page) == (0, CrawlSettings().max_links_per_page)
    with pytest.raises(
        ValueError,
        match=r"^\[crawl\] max-queued-per-host must not be negative \(0: no cap\) "
        r"\(set by flag --max-queued-per-host\)$",
    ):
        command.settings_from_args(
            parser.parse_args(["--start-url", "http://x/", "--max-queued-per-host", "-1"])
        )


def test_run_takes_the_caps_from_flags_environment_and_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[crawl]\nmax-queued-per-host = 7000\n", encoding="utf-8")
    args = cli.build_parser().parse_args(["run", "--config", str(toml), "--crawl-max-queued", "250000",
                                          "--crawl-max-links-per-page", "300"])  # fmt: skip
    settings = config.resolve(args, env={"CRYSTALLINE_CRAWL_ROBOTS_PER_MINUTE": "20"})
    crawl = settings.crawl
    caps = (crawl.max_queued, crawl.max_links_per_page, crawl.max_queued_per_host, crawl.robots_per_minute)
    assert caps == (250_000, 300, 7000, 20)
    defaults = config.resolve(cli.build_parser().parse_args(["run"]), env={}).crawl
    assert defaults.max_queued == CrawlSettings().max_queued
    with pytest.raises(
        ValueError,
        match=r"^\[crawl\] max-queued must not be negative \(0: no cap\) \(set by flag --crawl-max-queued\)$",
    ):
        config.resolve(cli.build_parser().parse_args(["run", "--crawl-max-queued", "-5"]), env={})


def test_a_url_whose_robots_txt_left_the_cache_waits_when_the_budget_is_spent(tmp_path: Path) -> None:
    async def main() -> None:
        crawler = Crawler(fast_settings(tmp_path, robots_per_minute=2), MemorySink())
        try:
            crawler.add_url("http://127.0.0.1:9/a")
            (entry,) = crawler.frontier.claim("http://127.0.0.1:9", 1, time.time())
            assert crawler.robots_budget.take() and crawler.robots_budget.take()  # the minute is spent
            # no token from the launch (the rules were cached then): no request, back to the queue
            assert await crawler._robots_allow(entry, robots_token=False) is False
            stats = crawler.stats()
            assert (stats["queued"], stats["in_flight"], stats["robots_deferred"]) == (1, 0, 1)
            assert crawler.robots.fetches == 0
            assert crawler.politeness.slot(entry.origin).hold_until > time.time()  # the host waits
        finally:
            crawler.close()

    asyncio.run(main())


def test_a_frontier_grown_before_the_caps_is_trimmed_by_the_crawl(tmp_path: Path) -> None:
    async def leaf(request: web.Request) -> web.Response:
        return html("a leaf")

    settings = fast_settings(tmp_path, max_queued_per_host=10, max_pages=1)

    async def main() -> None:
        async with serve([web.get("/{name}", leaf)]) as base:
            uncapped = Frontier(settings.frontier_path)
            uncapped.add([NewUrl(f"{base}/deep{i}", base, 3) for i in range(50)])
            uncapped.close()
            summary, sink, crawler = await crawl(settings, [base + "/start"])
        assert sink.sources() == [base + "/start"]  # the shallowest went first, and was kept
        # adding /start took the place of one deep URL; the crawl's trim dropped 40 more
        assert summary.dropped[DROP_HOST_FULL] == 40 and crawler.stats()["dropped"][DROP_HOST_FULL] == 41
        assert summary.queued == 9 and "40 host queue full" in summary.line()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_page_limited_host_linked_from_another_host_ends_at_its_limit(tmp_path: Path) -> None:
    """A host at --max-pages-per-host that a page of another host links to again: the one-shot
    crawl ends (before: its new URL was queued, the host's next_at went to FAR_FUTURE and the run
    waited forever), and the host has exactly its limit stored (before: 3 of 2, claimed together)."""
    hits = Hits()
    base: dict[str, str] = {}

    async def main() -> None:
        async def other_page(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            await asyncio.sleep(0.2)  # its links reach the limited host after its queue was dropped
            more = f'<a href="/b/{i + 1}">n</a>' if i < 5 else ""
            return html(f'page b{i} {more}<a href="{base["limited"]}/a/{100 + i}">a</a>')

        async def limited_page(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            other = f'<a href="{base["other"]}/b/0">b</a>'
            more = f'<a href="/a/1">1</a><a href="/a/2">2</a>{other}' if i == 0 else ""
            return html(f"page a{i} {more}")

        async with (
            serve([web.get("/b/{i}", other_page)], host="127.0.0.2") as base["other"],
            serve([web.get("/a/{i}", limited_page)], hits=hits) as base["limited"],
        ):
            settings = fast_settings(tmp_path, allowed_domains=("127.0.0.1", "127.0.0.2"),
                                     max_pages_per_host=2)  # fmt: skip
            summary, sink, _ = await crawl(settings, [base["limited"] + "/a/0"], timeout=40)
        limited = [u for u in sink.sources() if u.startswith(base["limited"])]
        assert summary.reason == "frontier empty"
        assert len(limited) == 2 and summary.stored_total == 4  # 2 per host, exactly
        assert summary.dropped[DROP_HOST_PAGES] > 0  # the other host's links to it were not queued
        assert len([p for p in hits.paths() if p.startswith("/a/")]) == 2

    asyncio.run(main())
