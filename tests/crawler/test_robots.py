"""robots.txt: RFC 9309 matching through protego, and the once-per-host fetch with its failure modes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from _loopback import Hits, crawl, fast_settings, gaps, html, serve, url_state
from aiohttp import web

from crystalline.crawler.crawl import ONLY_DEFERRED
from crystalline.crawler.frontier import DROP_ROBOTS, ROBOTS_STORED_MAX_BYTES, Frontier
from crystalline.crawler.politeness import Politeness
from crystalline.crawler.robots import RobotsBudget, RobotsResponse, RobotsRules, rules_from_response
from crystalline.crawler.settings import CrawlSettings

ROBOTS = """
User-agent: *
Disallow: /

User-agent: crystalline-bot
Disallow: /private
Allow: /private/open
Disallow: /*.pdf$
Disallow: /tmp*/cache
Disallow: /%7Ejoe/
Allow: /same
Disallow: /same
"""


def _rules(text: str = ROBOTS, token: str = "crystalline-bot") -> RobotsRules:
    return RobotsRules.parse(text, token)


def test_product_token_is_the_user_agent_before_the_slash() -> None:
    assert CrawlSettings(user_agent="crystalline-bot/0.1 (+https://x.org)").product_token == "crystalline-bot"
    assert CrawlSettings(user_agent="MyCrawler").product_token == "MyCrawler"


def test_the_most_specific_group_wins() -> None:
    assert _rules().allowed("http://h/public")  # our group allows what * disallows
    assert not _rules(token="otherbot").allowed("http://h/public")  # others fall back to *


def test_longest_match_wins_and_allow_wins_a_tie() -> None:
    rules = _rules()
    assert not rules.allowed("http://h/private/x")
    assert rules.allowed("http://h/private/open/x")
    assert rules.allowed("http://h/same")


def test_wildcards_and_end_anchor() -> None:
    rules = _rules()
    assert not rules.allowed("http://h/docs/a.pdf")
    assert rules.allowed("http://h/docs/a.pdf?download=1")  # $ anchors the end
    assert not rules.allowed("http://h/tmp123/cache/x")
    assert rules.allowed("http://h/tmp123/other")


def test_percent_encoding_is_normalised() -> None:
    rules = _rules()
    assert not rules.allowed("http://h/~joe/index.html")
    assert not rules.allowed("http://h/%7ejoe/index.html")
    assert not rules.allowed("http://h/%7Ejoe/index.html")


def test_crawl_delay_and_sitemaps_are_read() -> None:
    rules = _rules("User-agent: *\nCrawl-delay: 2.5\nSitemap: http://h/sitemap.xml\n")
    assert rules.crawl_delay() == 2.5
    assert rules.sitemaps() == ["http://h/sitemap.xml"]


def test_status_classes() -> None:
    assert rules_from_response(RobotsResponse(404, b""), "bot").allowed("http://h/x")
    assert not rules_from_response(RobotsResponse(404, b""), "bot").unavailable
    for response in (RobotsResponse(503, b""), RobotsResponse(0, b"", "connection refused")):
        rules = rules_from_response(response, "bot")
        assert rules.unavailable and not rules.allowed("http://h/x")


def _site_with_robots(robots: tuple[int, str], pages: int = 6) -> list[web.RouteDef]:
    async def robots_txt(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)  # concurrent first requests arrive while it is being fetched
        return web.Response(status=robots[0], text=robots[1])

    async def start(request: web.Request) -> web.Response:
        return html("".join(f'<a href="/p/{i}">p</a>' for i in range(pages)) + '<a href="/private/x">x</a>')

    async def page(request: web.Request) -> web.Response:
        return html("page")

    return [web.get("/robots.txt", robots_txt), web.get("/", start), web.get("/p/{i}", page),
            web.get("/private/x", page)]  # fmt: skip


def test_robots_fetched_once_and_obeyed(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        robots = (200, "User-agent: *\nDisallow: /private\n")
        async with serve(_site_with_robots(robots), hits=hits) as base:
            seeds = [base + "/", *(f"{base}/p/{i}" for i in range(6))]  # concurrent first requests
            _, sink, _ = await crawl(fast_settings(tmp_path, concurrency=8, per_host_concurrency=8), seeds)
        assert hits.count("/robots.txt") == 1
        assert hits.count("/private/x") == 0
        assert len(sink.docs) == 7

    asyncio.run(main())


def test_robots_404_allows_everything(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site_with_robots((404, ""))) as base:
            _, sink, _ = await crawl(fast_settings(tmp_path), [base + "/"])
        assert len(sink.docs) == 8

    asyncio.run(main())


def test_robots_503_disallows_everything_and_defers_the_host(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        async with serve(_site_with_robots((503, "")), hits=hits) as base:
            settings = fast_settings(tmp_path, max_retries=1, defer_base=600.0)
            summary, sink, _ = await crawl(settings, [base + "/"])
        assert sink.docs == []
        assert hits.paths() == ["/robots.txt"]  # no page; not asked again before the deferral ends
        assert (summary.reason, summary.failed, summary.queued) == (ONLY_DEFERRED, 0, 1)
        [(origin, why, until, queued)] = summary.deferred
        assert (origin, why, queued) == (base, "robots.txt 503: disallow all", 1)
        assert 540 <= until - time.time() <= 660  # defer_base with its +-10 % jitter

    asyncio.run(main())


def test_robots_unreachable_defers_the_host(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve([]) as base:
            pass  # the port is closed now: connection refused
        settings = fast_settings(tmp_path, max_retries=0)
        summary, sink, _ = await crawl(settings, [base + "/"])
        assert sink.docs == [] and summary.failed == 0 and summary.reason == ONLY_DEFERRED
        assert "robots.txt unreachable" in summary.deferred[0][1]

    asyncio.run(main())


def test_crawl_delay_is_honoured(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        robots = (200, "User-agent: *\nCrawl-delay: 0.3\n")
        async with serve(_site_with_robots(robots, pages=3), hits=hits) as base:
            settings = fast_settings(tmp_path, per_host_concurrency=4)
            _, sink, _ = await crawl(settings, [base + "/"])
        assert len(sink.docs) == 5
        times = hits.times()  # robots.txt included: it is a request to the host as well
        assert len(times) == 6
        assert min(gaps(times)) >= 0.3

    asyncio.run(main())


def test_robots_budget_allows_n_a_minute_and_spaces_the_hosts_it_turns_away() -> None:
    budget = RobotsBudget(3)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert 0 < budget.wait() <= RobotsBudget.WINDOW  # the first request's minute must pass
    first, second = budget.retry_in(), budget.retry_in()
    assert first >= budget.wait() and second - first >= RobotsBudget.WINDOW / 3 - 0.1  # one per free request
    budget.refund()  # the last request was not made after all
    assert budget.take() and not budget.take()
    unlimited = RobotsBudget(0)
    assert all(unlimited.take() for _ in range(1000)) and unlimited.wait() == 0.0


def test_links_robots_disallows_are_dropped_at_admission_once_its_rules_are_known(tmp_path: Path) -> None:
    # before: /private/x got a row, was claimed, then skipped (a SKIPPED row for every such link,
    # outside every cap, and a host delay for each)
    async def main() -> None:
        hits = Hits()
        robots = (200, "User-agent: *\nDisallow: /private\n")
        async with serve(_site_with_robots(robots), hits=hits) as base:
            settings = fast_settings(tmp_path)
            summary, sink, _ = await crawl(settings, [base + "/"])
        assert len(sink.docs) == 7 and hits.count("/private/x") == 0
        assert summary.dropped[DROP_ROBOTS] == 1 and summary.skipped == 0
        assert url_state(settings, base + "/private/x") is None  # no row

    asyncio.run(main())


def test_a_url_settled_without_a_request_costs_its_host_no_delay(tmp_path: Path) -> None:
    politeness = Politeness(fast_settings(tmp_path, min_delay=5.0))
    politeness.started("http://h")
    free_at = politeness.finished("http://h", 0.1, ok=True)  # a request: the host waits 5 s
    for _ in range(10):  # ten claimed URLs robots.txt disallows: no request, no further wait
        politeness.started("http://h")
        assert politeness.finished("http://h", None, ok=False, requested=False) == free_at
    politeness.started("http://h")
    assert politeness.finished("http://h", 0.1, ok=True) > free_at  # the next request waits again


def test_stored_robots_older_than_their_lifetime_are_deleted_and_large_ones_not_kept(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site_with_robots((200, "User-agent: *\nDisallow: /private\n"))) as base:
            settings = fast_settings(tmp_path)
            frontier = Frontier(settings.frontier_path)
            now = time.time()
            frontier.save_robots("http://old.example", now - settings.robots_ttl - 60, 200, b"")
            frontier.save_robots("http://young.example", now - 60, 200, b"")
            frontier.save_robots("http://large.example", now, 200, b"#" * (ROBOTS_STORED_MAX_BYTES + 1))
            frontier.close()
            await crawl(settings, [base + "/"])
        frontier = Frontier(settings.frontier_path)
        kept = {r[0] for r in frontier._db.execute("SELECT origin FROM robots")}
        frontier.close()
        assert kept == {"http://young.example", base}  # the crawl's own is kept too

    asyncio.run(main())
