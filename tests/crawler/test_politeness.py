"""Per-host politeness: delays seen by the server, Retry-After, AutoThrottle, per-host concurrency."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from _loopback import Hits, crawl, fast_settings, gaps, html, serve, url_state
from aiohttp import web

from crystalline.crawler.crawl import ONLY_DEFERRED
from crystalline.crawler.politeness import FAR_FUTURE, Politeness


def _chain_site(n: int) -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        return html("".join(f'<a href="/p/{j}">p</a>' for j in range(i + 1, n)))

    return [web.get("/p/{i}", page)]


def test_minimum_delay_between_requests_to_a_host(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        async with serve(_chain_site(5), hits=hits) as base:
            settings = fast_settings(tmp_path, min_delay=0.25, per_host_concurrency=8, concurrency=8)
            _, sink, _ = await crawl(settings, [base + "/p/0"])
        assert len(sink.docs) == 5
        assert len(hits.log) == 6  # robots.txt + 5 pages
        assert min(gaps(hits.times())) >= 0.25

    asyncio.run(main())


def test_hosts_are_delayed_independently(tmp_path: Path) -> None:
    async def main() -> None:
        hits_a, hits_b = Hits(), Hits()
        async with serve(_chain_site(4), hits=hits_a) as a, serve(_chain_site(4), "127.0.0.2", hits_b) as b:
            settings = fast_settings(tmp_path, min_delay=0.2, allowed_domains=("127.0.0.1", "127.0.0.2"))
            _, sink, _ = await crawl(settings, [a + "/p/0", b + "/p/0"])
        assert len(sink.docs) == 8
        assert min(gaps(hits_a.times())) >= 0.2 and min(gaps(hits_b.times())) >= 0.2
        # the two hosts were crawled side by side, not one after the other
        assert hits_b.times()[0] < hits_a.times()[-1]

    asyncio.run(main())


def test_429_with_retry_after_holds_the_host(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        calls = {"n": 0}

        async def limited(request: web.Request) -> web.Response:
            calls["n"] += 1
            if calls["n"] == 1:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return html("finally")

        async with serve([web.get("/", limited)], hits=hits) as base:
            summary, sink, _ = await crawl(fast_settings(tmp_path), [base + "/"])
        assert sink.sources() == [base + "/"]
        first, second = hits.times(lambda p: p == "/")
        assert second - first >= 1.0
        assert summary.retried == 1

    asyncio.run(main())


def test_503_without_retry_after_backs_off_exponentially(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()

        async def unavailable(request: web.Request) -> web.Response:
            return web.Response(status=503)

        async with serve([web.get("/", unavailable)], hits=hits) as base:
            settings = fast_settings(tmp_path, max_retries=3, backoff_base=0.1)
            summary, _, _ = await crawl(settings, [base + "/"])
        waits = gaps(hits.times(lambda p: p == "/"))
        assert len(waits) == 3 and summary.failed == 1
        for wait, expected in zip(waits, (0.1, 0.2, 0.4), strict=True):
            assert wait >= expected

    asyncio.run(main())


def test_per_host_concurrency_without_delay(tmp_path: Path) -> None:
    async def main() -> None:
        active = {"now": 0, "max": 0}

        async def page(request: web.Request) -> web.Response:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            await asyncio.sleep(0.05)
            active["now"] -= 1
            i = int(request.match_info["i"])
            return html("".join(f'<a href="/p/{j}">p</a>' for j in range(20)) if i == 0 else f"leaf {i}")

        async with serve([web.get("/p/{i}", page)]) as base:
            settings = fast_settings(tmp_path, per_host_concurrency=3, concurrency=10)
            _, sink, _ = await crawl(settings, [base + "/p/0"])
        assert len(sink.docs) == 20
        assert active["max"] == 3

    asyncio.run(main())


def test_autothrottle_follows_latency(tmp_path: Path) -> None:
    # a min_delay of 0 turns the adaptive delay off (CrawlSettings.adaptive_delay): keep it small
    settings = fast_settings(tmp_path, autothrottle=True, min_delay=0.01, autothrottle_max_delay=5.0)
    politeness = Politeness(settings)
    slot = politeness.slot("http://h")
    for _ in range(10):
        politeness.started("http://h")
        politeness.finished("http://h", 0.8, ok=True)
    assert 0.7 < politeness.delay(slot) <= 0.8  # target concurrency 1: delay -> latency
    politeness.started("http://h")
    politeness.finished("http://h", 0.01, ok=False)  # a fast error never lowers the delay
    assert politeness.delay(slot) > 0.7
    for _ in range(20):
        politeness.started("http://h")
        politeness.finished("http://h", 0.01, ok=True)
    assert politeness.delay(slot) < 0.05
    assert politeness.capacity(slot) == 1  # with a delay, one request at a time


def test_a_min_delay_of_0_turns_the_adaptive_delay_off(tmp_path: Path) -> None:
    politeness = Politeness(fast_settings(tmp_path, autothrottle=True, min_delay=0.0))
    slot = politeness.slot("http://h")
    for _ in range(10):
        politeness.started("http://h")
        politeness.finished("http://h", 0.8, ok=True)
    assert politeness.delay(slot) == 0.0


def test_a_full_host_is_not_due(tmp_path: Path) -> None:
    politeness = Politeness(fast_settings(tmp_path, per_host_concurrency=2))
    assert politeness.started("http://h") < FAR_FUTURE
    assert politeness.started("http://h") == FAR_FUTURE
    assert politeness.finished("http://h", 0.1, ok=True) < FAR_FUTURE


@pytest.mark.timeout(60)
def test_a_long_retry_after_defers_the_host_and_fails_nothing(tmp_path: Path) -> None:
    # before: the wait was cut to max_backoff and the URL retried, then failed; a one-shot crawl
    # waited for it
    async def main() -> None:
        hits = Hits()

        async def start(request: web.Request) -> web.Response:
            return html('<a href="/busy">busy</a>')

        async def busy(request: web.Request) -> web.Response:
            return web.Response(status=503, headers={"Retry-After": "3600"})

        async with serve([web.get("/", start), web.get("/busy", busy)], hits=hits) as base:
            settings = fast_settings(tmp_path, max_backoff=0.5)
            summary, sink, _ = await crawl(settings, [base + "/"], timeout=30)
        assert summary.reason == ONLY_DEFERRED and summary.failed == 0 and hits.count("/busy") == 1
        assert sink.sources() == [base + "/"]
        [(origin, why, until, queued)] = summary.deferred
        assert (origin, why, queued) == (base, "HTTP 503 Retry-After", 1)
        assert until > time.time() + 3000
        assert url_state(settings, base + "/busy") == ("queued", None, None)

    asyncio.run(main())
