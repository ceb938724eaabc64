"""Traps are recognised by what their pages give, not by how many there are: a site of 5,000
numbered pages is crawled whole while a calendar on the same host is still cut."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from _loopback import crawl, fast_settings, html, prose, serve
from aiohttp import web

from crystalline.crawler.frontier import DROP_TRAP, STORED, TRAP_WINDOW, Frontier, NewUrl, Revisit
from crystalline.crawler.shapes import TextNovelty


def numbered_site_with_a_calendar(pages: int) -> list[web.RouteDef]:
    """/article/<n>: its own text, links to the next article and 9 others and to the calendar;
    /calendar?month=YYYY-MM links to the months on either side and two empty days."""
    rng = random.Random(7)
    texts = [prose(n, 60) for n in range(pages)]
    targets = [[(n + 1) % pages, *(rng.randrange(pages) for _ in range(9))] for n in range(pages)]

    async def article(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        links = "".join(f'<a href="/article/{t}">{t}</a>' for t in targets[n])
        nav = '<nav><a href="/calendar?month=2024-01">calendar</a></nav>'
        return html(f"{nav}<h1>Article {n}</h1><p>{texts[n]}</p>{links}")

    async def calendar(request: web.Request) -> web.Response:
        year, month = (int(x) for x in request.query.get("month", "2024-01").split("-"))
        nxt = f"{year + month // 12}-{month % 12 + 1:02d}"
        prv = f"{year - (month == 1)}-{(month - 2) % 12 + 1:02d}"
        days = "".join(f'<a href="/day?d={year}-{month:02d}-{d:02d}">{d}</a>' for d in (1, 15))
        around = f'<a href="/calendar?month={nxt}">next</a><a href="/calendar?month={prv}">prev</a>'
        return html(f"<h1>Events {year}-{month:02d}</h1><p>No events this month.</p>{around}{days}")

    async def day(request: web.Request) -> web.Response:
        return html(f"<h1>{request.query['d']}</h1><p>No events on this day.</p>")

    return [web.get("/article/{n}", article), web.get("/calendar", calendar), web.get("/day", day)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_five_thousand_numbered_pages_are_crawled_whole_and_a_calendar_is_cut(tmp_path: Path) -> None:
    pages = 5000

    async def main() -> None:
        async with serve(numbered_site_with_a_calendar(pages)) as base:
            settings = fast_settings(tmp_path, max_depth=1000, concurrency=8, per_host_concurrency=8)
            summary, sink, crawler = await crawl(settings, [base + "/article/0"], timeout=540)
        sources = sink.sources()
        articles = {s for s in sources if "/article/" in s}
        assert articles == {f"{base}/article/{n}" for n in range(pages)}  # all of them, once each
        assert len(articles) == len([s for s in sources if "/article/" in s])
        months = [s for s in sources if "/calendar" in s]
        days = [s for s in sources if "/day" in s]
        assert len(days) <= TRAP_WINDOW + 8  # empty days: cut after one window (+ in flight)
        assert len(months) <= 2 * TRAP_WINDOW + 8  # months: while they led to new days, then a window
        assert summary.reason == "frontier empty"
        assert crawler.stats()["traps"] == 2 and summary.dropped[DROP_TRAP] > 0

    asyncio.run(main())


def test_numbered_pages_sharing_their_text_but_a_heading_are_not_cut_without_ingest(tmp_path: Path) -> None:
    """Near duplicates are ingest's to judge: a crawl alone cuts only what reads exactly the same."""
    paragraph = prose(1, 400)

    async def page(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        links = "".join(f'<a href="/p/{(n * 7 + k) % 300}">x</a>' for k in range(1, 11))
        return html(f"<h1>Page {n}</h1><p>{paragraph}</p>{links}")

    async def main() -> None:
        async with serve([web.get("/p/{n}", page)]) as base:
            summary, sink, _ = await crawl(
                fast_settings(tmp_path, concurrency=8), [base + "/p/0"], timeout=120
            )
        assert len(set(sink.sources())) == 300 and summary.dropped[DROP_TRAP] == 0

    asyncio.run(main())


def test_text_novelty_masks_digits_only_where_a_query_makes_the_urls() -> None:
    novelty = TextNovelty()
    assert novelty.novel("http://h", "/cal?month", "Events of 2024-01: none")
    assert not novelty.novel("http://h", "/cal?month", "Events of 2024-02: none")
    assert novelty.novel("http://h", "/p/#", "Page 1 of the story")
    assert novelty.novel("http://h", "/p/#", "Page 2 of the story")
    assert not novelty.novel("http://h", "/p/#", "Page 2 of the story")
    assert not novelty.novel("http://h", "/empty", "")


def _fetch_with_ingest_verdicts(path: Path, batch: int, near_duplicates: bool) -> tuple[bool, int]:
    """Pages of one shape whose bodies the crawler finds new (they differ in a heading), with
    ingest's verdicts (no new text for near duplicates) coming back ``batch`` pages at a time, as
    the feedback reader delivers them; (trapped, pages fetched)."""
    frontier = Frontier(path)
    origin = "http://h"
    frontier.add([NewUrl(f"{origin}/p/{i}", origin, 1, pattern="/p/#") for i in range(200)])
    waiting: list[str] = []
    fetched = 0
    while (origin, "/p/#") not in frontier.trapped and fetched < 200:
        [entry] = frontier.claim(origin, 1, 0.0)
        revisit = Revisit(1e12, 86400, 86400, 0.0, body_hash=str(fetched), new_version=True, fresh=True)
        frontier.finish(entry, STORED, 200, revisit=revisit)
        fetched += 1
        waiting.append(entry.url)
        if len(waiting) == batch:
            frontier.ingest_verdicts([(u, not near_duplicates) for u in waiting], fetched, 0.4)
            waiting = []
    trapped = (origin, "/p/#") in frontier.trapped
    frontier.close()
    return trapped, fetched


@pytest.mark.parametrize("batch", [1, 5, 16])
def test_ingest_finding_near_duplicates_cuts_their_shape(tmp_path: Path, batch: int) -> None:
    # before: ingest's "no new text" was a second bit beside the crawler's "new text", so at most
    # 8 of 16 bits were set and the shape was never cut
    trapped, fetched = _fetch_with_ingest_verdicts(tmp_path / "f.sqlite", batch, near_duplicates=True)
    assert trapped and fetched <= TRAP_WINDOW + batch


@pytest.mark.parametrize("batch", [1, 5])
def test_ingest_finding_new_text_leaves_the_shape_alone(tmp_path: Path, batch: int) -> None:
    assert _fetch_with_ingest_verdicts(tmp_path / "f.sqlite", batch, near_duplicates=False) == (False, 200)
