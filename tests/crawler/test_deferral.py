"""Hosts that cannot be crawled now: robots.txt 503 (deferred with a growing backoff, the crawl
ends and says so), daily budgets; robots.txt kept in the frontier across restarts for 24 hours."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from _loopback import Hits, MemorySink, crawl, fast_settings, html, serve
from aiohttp import web

from crystalline.crawler import command
from crystalline.crawler.crawl import ONLY_DEFERRED, Crawler
from crystalline.crawler.frontier import Frontier


def _site(n: int, robots: list[int]) -> list[web.RouteDef]:
    """/p/0 links to /p/1 .. /p/{n-1}; robots.txt answers with the statuses in ``robots`` in turn
    (the last one from then on)."""

    async def robots_txt(request: web.Request) -> web.Response:
        status = robots.pop(0) if len(robots) > 1 else robots[0]
        return web.Response(status=status, text="User-agent: *\nDisallow: /private\n")

    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        links = "".join(f'<a href="/p/{j}">{j}</a>' for j in range(1, n)) if i == 0 else ""
        return html(f"page {i} {links}")

    return [web.get("/robots.txt", robots_txt), web.get("/p/{i}", page)]


def test_a_deferred_host_resumes_when_its_robots_txt_answers_and_its_backoff_grows(tmp_path: Path) -> None:
    hits = Hits()

    async def main() -> None:
        async with serve(_site(5, [503, 503, 200]), hits=hits) as base:
            settings = fast_settings(tmp_path, defer_base=0.3, defer_max=10.0)
            first, sink, _ = await crawl(settings, [base + "/p/0"])
            assert (first.reason, len(sink.docs)) == (ONLY_DEFERRED, 0)
            wait1 = first.deferred[0][2] - time.time()
            assert 0 < wait1 <= 0.33
            idle = Crawler(settings, MemorySink())  # what the daemon asks between passes
            assert idle.next_work_at() == first.deferred[0][2]
            idle.close()
            await asyncio.sleep(wait1 + 0.05)
            second, sink, _ = await crawl(settings, [base + "/p/0"])  # 503 again: twice the wait
            wait2 = second.deferred[0][2] - time.time()
            assert second.reason == ONLY_DEFERRED and 0.5 <= wait2 <= 0.66
            await asyncio.sleep(wait2 + 0.05)
            third, sink, _ = await crawl(settings, [base + "/p/0"])
        assert (third.reason, third.deferred, len(sink.docs)) == ("frontier empty", [], 5)
        assert hits.count("/robots.txt") == 3

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_crawl_command_ends_when_only_a_503_robots_host_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: every other URL is done in seconds; the command must not wait out the
    503 host's backoff but end, list it, and exit 0 (the test's deadline is far below the backoff)."""

    async def main() -> int:
        async with serve(_site(10, [200])) as good, serve(_site(3, [503]), host="127.0.0.2") as bad:

            async def hub(request: web.Request) -> web.Response:
                return html(f'<a href="{good}/p/0">good</a><a href="{bad}/p/0">bad</a>')

            async with serve([web.get("/", hub)], host="127.0.0.3") as start:
                parser = argparse.ArgumentParser(prog="crystalline")
                command.add_parser(parser.add_subparsers(dest="command", required=True))
                args = parser.parse_args(["crawl", "--start-url", start + "/",
                                          "--data-dir", str(tmp_path / "d"),
                                          "--allowed-domains", "127.0.0.1", "--allowed-domains", "127.0.0.2",
                                          "--allowed-domains", "127.0.0.3", "--min-delay", "0",
                                          "--allow-private-addresses"])  # fmt: skip
                code = await asyncio.wait_for(asyncio.to_thread(args.func, args), 60)
                out = capsys.readouterr().out
                assert f"deferred: {bad}: robots.txt 503: disallow all; retry after " in out
                assert f"crawl ended ({ONLY_DEFERRED}): 11 pages stored" in out
                assert "; 1 host deferred (the first retry at " in out.splitlines()[0]  # one line to log
                assert "run the same crawl again to resume it" in out
                return code

    assert asyncio.run(main()) == 0


def test_daily_budget_defers_the_host(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(_site(10, [404])) as base:
            summary, sink, crawler = await crawl(
                fast_settings(tmp_path, max_fetches_per_host_per_day=4), [base + "/p/0"]
            )
        assert (summary.reason, len(sink.docs)) == (ONLY_DEFERRED, 4)
        [(origin, why, until, queued)] = summary.deferred
        assert (origin, why, queued) == (base, "daily budget of 4 requests spent", 6)
        assert 86000 < until - time.time() <= 86400
        [host] = crawler.stats()["hosts"]
        assert (host["fetched"], host["stored"], host["queued"]) == (4, 4, 6)
        assert (host["host"], host["deferred"]) == (base, "daily budget of 4 requests spent")
        assert host["retry_at"] == pytest.approx(until, abs=0.1)

    asyncio.run(main())


def test_robots_txt_is_reused_after_a_restart_for_24_hours_then_refetched(tmp_path: Path) -> None:
    hits = Hits()
    settings = fast_settings(tmp_path, min_revisit=0.0)

    async def main() -> None:
        async with serve(_site(3, [200]), hits=hits) as base:
            await crawl(settings, [base + "/p/0"])
            await crawl(settings, [base + "/p/0"])  # a new process (frontier reopened), revisits
            assert hits.count("/robots.txt") == 1
            frontier = Frontier(settings.frontier_path)
            saved = frontier.load_robots(base)
            frontier.close()
            assert saved is not None and saved[1] == 200 and b"Disallow: /private" in saved[2]
            with sqlite3.connect(settings.frontier_path) as db:  # 24 hours and a minute later
                db.execute("UPDATE robots SET fetched_at = fetched_at - 86460")
            await crawl(settings, [base + "/p/0"])
        assert hits.count("/robots.txt") == 2
        assert hits.count("/p/1") == 3

    asyncio.run(main())
