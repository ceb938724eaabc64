"""Revisits against real local servers: conditional requests, 304s and unchanged bodies that cost
no ingest, changed pages ingested again as new versions, the adaptive interval, ingest's verdicts."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from _loopback import Hits, MemorySink, crawl, fast_settings, html, prose, serve
from _wait import until_async
from aiohttp import web

from crystalline.crawler.crawl import Crawler
from crystalline.crawler.feedback import IngestFeedback
from crystalline.crawler.frontier import Frontier
from crystalline.crawler.settings import CrawlSettings, parse_host_revisit
from crystalline.daemon import cli, config
from crystalline.documents import Spool
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.registry import Record, Registry
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.tokenizer import load_tokenizer


class Site:
    """Pages /p/0 .. /p/{n-1} (page 0 links to the others) with a version each; ``etags``: answer
    If-None-Match with 304 while the version is unchanged."""

    def __init__(self, n: int, etags: bool) -> None:
        self.n = n
        self.etags = etags
        self.version = dict.fromkeys(range(n), 0)
        self.conditional: list[str] = []  # the If-None-Match values received

    def routes(self) -> list[web.RouteDef]:
        async def page(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            tag = f'"p{i}-v{self.version[i]}"'
            if "If-None-Match" in request.headers:
                self.conditional.append(request.headers["If-None-Match"])
                if self.etags and request.headers["If-None-Match"] == tag:
                    return web.Response(status=304, headers={"ETag": tag})
            links = "".join(f'<a href="/p/{j}">{j}</a>' for j in range(1, self.n)) if i == 0 else ""
            response = html(f"<h1>Page {i}</h1><p>{prose(i * 1000 + self.version[i])}</p>{links}")
            if self.etags:
                response.headers["ETag"] = tag
            return response

        return [web.get("/p/{i}", page)]


def due_now(settings: CrawlSettings) -> None:
    """Let the revisit intervals pass (what a day of waiting would do)."""
    with sqlite3.connect(settings.frontier_path) as db:
        db.execute("UPDATE urls SET next_visit = 0, fetched_at = fetched_at - 1 WHERE state = 2")


def intervals(settings: CrawlSettings) -> dict[str, float]:
    with sqlite3.connect(settings.frontier_path) as db:
        return dict(db.execute("SELECT url, interval FROM urls WHERE state = 2"))


def test_a_304_costs_no_ingest_and_lengthens_the_interval(tmp_path: Path) -> None:
    site = Site(6, etags=True)
    settings = fast_settings(tmp_path, min_revisit=100.0, max_revisit=1000.0)

    async def main() -> None:
        async with serve(site.routes()) as base:
            first, _sink, _ = await crawl(settings, [base + "/p/0"])
            assert (first.stored, first.revisits) == (6, 0) and site.conditional == []
            assert set(intervals(settings).values()) == {100.0}
            due_now(settings)
            second, sink2, _ = await crawl(settings, [base + "/p/0"])
        assert sink2.docs == []  # nothing for ingest
        assert (second.revisits, second.not_modified, second.stored, second.stored_total) == (6, 6, 0, 6)
        assert sorted(site.conditional) == sorted(f'"p{i}-v0"' for i in range(6))
        assert set(intervals(settings).values()) == {140.0}  # unchanged: x (1 + revisit_inc_rate)

    asyncio.run(main())


def test_an_unchanged_200_is_not_handed_over_again(tmp_path: Path) -> None:
    site = Site(4, etags=False)
    settings = fast_settings(tmp_path, min_revisit=0.0)

    async def main() -> None:
        async with serve(site.routes()) as base:
            await crawl(settings, [base + "/p/0"])
            second, sink2, _ = await crawl(settings, [base + "/p/0"])  # min-revisit 0: all due
        assert sink2.docs == []
        assert (second.revisits, second.unchanged, second.not_modified) == (4, 4, 0)

    asyncio.run(main())


def test_a_run_never_revisits_what_it_fetched_itself(tmp_path: Path) -> None:
    hits = Hits()
    site = Site(5, etags=False)

    async def main() -> None:
        async with serve(site.routes(), hits=hits) as base:
            summary, _, _ = await crawl(fast_settings(tmp_path, min_revisit=0.0), [base + "/p/0"])
        assert summary.reason == "frontier empty"
        assert sorted(hits.paths()) == sorted(["/robots.txt", *(f"/p/{i}" for i in range(5))])

    asyncio.run(main())


@pytest.mark.timeout(180)
def test_a_changed_page_is_ingested_again_as_a_new_version(tmp_path: Path) -> None:
    site = Site(4, etags=True)
    settings = fast_settings(tmp_path, min_revisit=100.0, max_revisit=1000.0)
    spool = Spool(tmp_path / "spool")
    ingest_settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)

    def ingest_all() -> None:
        with Ingestor(ingest_settings, tmp_path / "ingest", load_tokenizer("bytes"), spool=spool) as ing:
            while ing.run_once():
                pass

    async def main() -> str:
        async with serve(site.routes()) as base:
            crawler_feedback = IngestFeedback(tmp_path / "ingest" / "registry.sqlite3")
            await crawl(settings, [base + "/p/0"], sink=spool)
            await asyncio.to_thread(ingest_all)
            site.version[2] += 1  # page 2 changes, the others do not
            due_now(settings)
            second, _, _ = await crawl(settings, [base + "/p/0"], sink=spool)
            assert (second.revisits, second.not_modified, second.changed) == (4, 3, 1)
            assert spool.count() == 1  # only the new version goes to ingest
            await asyncio.to_thread(ingest_all)
            verdicts, _ = crawler_feedback.since(0)
            crawler_feedback.close()
            assert verdicts.count((base + "/p/2", True)) == 2  # two versions, both new text
            return base

    base = asyncio.run(main())
    registry = Registry(tmp_path / "ingest" / "registry.sqlite3")
    try:
        rows = registry.db.execute(
            "SELECT state, tokens FROM documents WHERE source = ? ORDER BY id", (base + "/p/2",)
        ).fetchall()
    finally:
        registry.close()
    assert [state for state, _ in rows] == ["done", "done"]  # the old version's tokens are kept
    assert all(tokens > 0 for _, tokens in rows)
    assert intervals(settings)[base + "/p/2"] == 100.0  # changed: shorter, at its minimum
    frontier = Frontier(settings.frontier_path)
    assert frontier.new_versions == 1  # kept across runs
    frontier.close()
    assert intervals(settings)[base + "/p/1"] == 140.0


def test_ingest_verdicts_reach_the_frontier_once(tmp_path: Path) -> None:
    """A revisit whose body changed but whose text ingest found the same gets an unchanged
    page's interval; a shape whose pages ingest keeps finding duplicate is cut."""
    registry_path = tmp_path / "registry.sqlite3"
    frontier = Frontier(tmp_path / "frontier.sqlite")
    try:
        frontier._db.executemany(
            "INSERT INTO urls (url, origin, depth, state, versions, fresh, interval, prev_interval,"
            " fetched_at, next_visit, pattern) VALUES (?, 'http://h', 1, 2, ?, ?, ?, 100, 1000, 0, ?)",
            [
                ("http://h/rev", 2, None, 80.0, "/rev"),
                *((f"http://h/c?d={i}", 1, 1, 100.0, "/c?d") for i in range(16)),
            ],
        )
        frontier._db.execute("INSERT INTO hosts (origin) VALUES ('http://h')")
        registry = Registry(registry_path)
        registry.record(
            [
                Record(f"e{i}", f"d{i}", url, "crawl", "duplicate")
                for i, url in enumerate(["http://h/rev", *(f"http://h/c?d={i}" for i in range(16))])
            ]
            + [Record("drop", "dd", "/inbox/x.txt", "drop", "done")]
        )
        registry.close()
        feedback = IngestFeedback(registry_path)
        verdicts, cursor = feedback.since(frontier.feedback_cursor())
        assert cursor == 18 and len(verdicts) == 17  # the dropped file is no crawl verdict
        assert frontier.ingest_verdicts(verdicts, cursor, inc_rate=0.4) == 17
        assert feedback.since(frontier.feedback_cursor()) == ([], 18)  # read once
        feedback.close()
        row = frontier._db.execute(
            "SELECT interval, next_visit FROM urls WHERE url = 'http://h/rev'"
        ).fetchone()
        assert row == pytest.approx((140.0, 1140.0))  # the interval before the change, x 1.4
        assert ("http://h", "/c?d") in frontier.trapped
    finally:
        frontier.close()


def test_run_takes_the_revisit_budget_and_warc_keys(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[crawl]\nwarc-dir = "warc"\nwarc-max-bytes = 5000000\n', encoding="utf-8")
    args = cli.build_parser().parse_args(["run", "--config", str(toml), "--state-dir", str(tmp_path / "s"),
                                          "--crawl-min-revisit", "3600", "--crawl-revisit-share", "0.25",
                                          "--crawl-no-sitemaps"])  # fmt: skip
    env = {
        "CRYSTALLINE_CRAWL_MAX_FETCHES_PER_HOST_PER_DAY": "500",
        "CRYSTALLINE_CRAWL_MAX_LISTED_PER_HOST_PER_DAY": "70",
    }
    crawl = config.resolve(args, env=env).crawl
    assert (crawl.min_revisit, crawl.revisit_share, crawl.max_fetches_per_host_per_day) == (3600.0, 0.25, 500)
    assert crawl.max_listed_per_host_per_day == 70
    assert (crawl.warc_dir, crawl.warc_max_bytes, crawl.sitemaps) == (
        tmp_path / "s" / "warc",
        5_000_000,
        False,
    )
    defaults = config.resolve(cli.build_parser().parse_args(["run"]), env={}).crawl
    assert (defaults.min_revisit, defaults.warc_dir, defaults.sitemaps) == (86400.0, None, True)
    with pytest.raises(ValueError, match="min-revisit must not be negative"):
        config.resolve(cli.build_parser().parse_args(["run", "--crawl-min-revisit", "-1"]), env={})


def test_crawl_command_revisits_what_was_fetched_min_revisit_ago(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Site(5, etags=True)

    async def main() -> None:
        async with serve(site.routes()) as base:
            common = ["crawl", "--start-url", base + "/p/0", "--data-dir", str(tmp_path / "d"),
                      "--min-delay", "0", "--allow-private-addresses", "--no-sitemaps"]  # fmt: skip
            parser = cli.build_parser()
            first = parser.parse_args(common)  # default --min-revisit: a day
            assert await asyncio.to_thread(first.func, first) == 0
            again = parser.parse_args(common)  # within the day: nothing is due
            assert await asyncio.to_thread(again.func, again) == 0
            assert site.conditional == []
            site.version[3] += 1
            later = parser.parse_args([*common, "--min-revisit", "0"])  # as if a day had passed
            assert await asyncio.to_thread(later.func, later) == 0
        assert len(site.conditional) == 5
        out = capsys.readouterr().out.splitlines()
        assert "5 revisits (4 not modified, 0 unchanged, 1 changed)" in out[-1]

    asyncio.run(main())


@pytest.mark.parametrize("share", [0.25, 0.75])
def test_revisits_get_their_share_of_requests_while_new_urls_wait(tmp_path: Path, share: float) -> None:
    hits = Hits()
    site = Site(40, etags=True)

    async def fresh(request: web.Request) -> web.Response:
        return html(f"<p>{prose(5000 + int(request.match_info['i']))}</p>")

    async def main() -> None:
        async with serve([*site.routes(), web.get("/q/{i}", fresh)], hits=hits) as base:
            settings = fast_settings(tmp_path, min_revisit=0.0, concurrency=1, per_host_concurrency=1)
            await crawl(settings, [base + "/p/0"])
            hits.log.clear()
            new_urls = [f"{base}/q/{i}" for i in range(40)]  # 40 new URLs wait beside 40 due revisits
            await crawl(replace(settings, revisit_share=share), new_urls)
        first = [p for p in hits.paths() if p != "/robots.txt"][:40]
        revisits = sum(p.startswith("/p/") for p in first)
        assert abs(revisits - share * 40) <= 3, first

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_daemon_pass_revisits_small_site_next_to_an_endless_one(tmp_path: Path) -> None:
    """A daemon pass lasts as long as new URLs come (a large site always has one more): pages
    that come due meanwhile are revisited within the pass, not after it (before: 0 revisits of
    5 pages with a 1 s interval in 10 s next to an endless site)."""
    hits = Hits()

    async def main() -> None:
        async def small(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            links = "".join(f'<a href="/s/{j}">x</a>' for j in range(1, 5)) if i == 0 else ""
            return html(f"<p>{prose(i)}</p>{links}")

        async def endless(request: web.Request) -> web.Response:  # always one more new page, slowly
            i = int(request.match_info["i"])
            await asyncio.sleep(0.3)
            return html(f'<p>{prose(1000 + i)}</p><a href="/e/{i + 1}">next</a>')

        routes = [web.get("/s/{i}", small), web.get("/e/{i}", endless)]
        async with serve(routes, hits=hits) as base:
            settings = fast_settings(tmp_path, min_revisit=1.0, max_revisit=2.0, max_depth=10_000)
            crawler = Crawler(settings, MemorySink())
            try:
                crawler.add_url(base + "/s/0")
                crawler.add_url(base + "/e/0")
                stop = asyncio.Event()
                run = asyncio.create_task(crawler.run(stop))
                try:  # the pass stopped once it revisited, at 5 s at most (hits only add up)
                    await until_async(revisited, lambda: f"the small site's hits in 5 s: {small_hits()}", 5)
                finally:
                    stop.set()
                    summary = await run
            finally:
                crawler.close()
        assert summary.reason == "stopped"  # the endless site kept the pass going

    def small_hits() -> list[str]:
        return [p for p in hits.paths() if p.startswith("/s/")]

    def revisited() -> bool:  # each of the 5 pages, and some fetched again in the pass
        return len(set(small_hits())) == 5 and len(small_hits()) > 5

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_feedback_is_read_until_caught_up(tmp_path: Path) -> None:
    """2,500 verdicts waiting: one turn of the crawl loop reads them all (before: 1,000 every 5 s,
    behind any ingest of more than 200 documents a second)."""
    registry_path = tmp_path / "ingest" / "registry.sqlite3"
    registry_path.parent.mkdir()
    registry = Registry(registry_path)
    registry.record([Record(f"e{i}", f"d{i}", f"http://h/p/{i}", "crawl", "done") for i in range(2500)])
    registry.close()
    crawler = Crawler(fast_settings(tmp_path), MemorySink(), feedback=IngestFeedback(registry_path))
    try:
        summary = asyncio.run(crawler.run(asyncio.Event()))  # nothing to crawl: one turn
        assert summary.reason == "frontier empty" and crawler.frontier.feedback_cursor() == 2500
    finally:
        crawler.close()


def test_each_host_keeps_its_pages_within_its_own_revisit_bounds(tmp_path: Path) -> None:
    a, b = Site(3, etags=True), Site(3, etags=True)
    host_revisit = (parse_host_revisit("127.0.0.1=100:120"), parse_host_revisit("127.0.0.2=1000:1200"))
    settings = fast_settings(tmp_path, min_revisit=10.0, max_revisit=100_000.0, host_revisit=host_revisit,
                             allowed_domains=("127.0.0.1", "127.0.0.2"))  # fmt: skip

    def by_host() -> dict[str, set[float]]:
        out: dict[str, set[float]] = {}
        for url, interval in intervals(settings).items():
            out.setdefault(url.split("/")[2].split(":")[0], set()).add(interval)
        return out

    async def main() -> None:
        async with serve(a.routes()) as base_a, serve(b.routes(), host="127.0.0.2") as base_b:
            start = [base_a + "/p/0", base_b + "/p/0"]
            first, _, _ = await crawl(settings, start)
            assert first.stored == 6
            assert by_host() == {"127.0.0.1": {100.0}, "127.0.0.2": {1000.0}}  # each host's minimum
            due_now(settings)
            await crawl(settings, start)  # all unchanged (304): x 1.4, then each host's maximum
            assert by_host() == {"127.0.0.1": {120.0}, "127.0.0.2": {1200.0}}
            for site in (a, b):
                for i in range(3):
                    site.version[i] += 1
            due_now(settings)
            second, _, _ = await crawl(settings, start)  # all changed: x 0.8, then each host's minimum
            assert second.revisits == 6
            assert by_host() == {"127.0.0.1": {100.0}, "127.0.0.2": {1000.0}}

    asyncio.run(main())


def test_host_revisit_bounds_from_the_command_line_and_the_daemon_config(tmp_path: Path) -> None:
    from crystalline.crawler import command

    flags = ["--host-revisit", "News.Example=600:86400", "--host-revisit", "live.news.example=60:600",
             "--max-listed-per-host-per-day", "40"]  # fmt: skip
    args = command.build_parser().parse_args(
        ["--start-url", "https://a.example/", "--data-dir", str(tmp_path), *flags]
    )
    s = command.settings_from_args(args)
    assert s.host_revisit == (("news.example", 600.0, 86400.0), ("live.news.example", 60.0, 600.0))
    assert s.max_listed_per_host_per_day == 40
    assert s.revisit_bounds("www.news.example") == (600.0, 86400.0)  # a subdomain
    assert s.revisit_bounds("live.news.example") == (60.0, 600.0)  # the longest match wins
    assert s.revisit_bounds("othernews.example") == (s.min_revisit, s.max_revisit)  # the global bounds
    for bad in ("news.example", "news.example=600", "=1:2", "h=5:1", "h=-1:2", "h=a:b"):
        with pytest.raises(ValueError, match="host-revisit"):
            parse_host_revisit(bad)
    env = {"CRYSTALLINE_CRAWL_HOST_REVISIT": "a.example=60:600,b.example=3600:7200"}
    run = cli.build_parser().parse_args(["run", "--state-dir", str(tmp_path / "s")])
    crawl_settings = config.resolve(run, env=env).crawl
    assert crawl_settings.host_revisit == (("a.example", 60.0, 600.0), ("b.example", 3600.0, 7200.0))
    with pytest.raises(ValueError, match="host-revisit"):
        config.resolve(run, env={"CRYSTALLINE_CRAWL_HOST_REVISIT": "a.example=600:60"})
