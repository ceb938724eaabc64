"""The crawl loop: claim URLs from the frontier as politeness allows, fetch them, hand stored pages
to a ``DocumentSink`` and queue their links.

``Crawler`` is the library entry point (the daemon runs one; ``crystalline crawl`` runs one to
completion). A page counts as stored once the sink has acknowledged it; only then is its URL
marked STORED, together with its links, so a crash in between refetches that page, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp.abc import AbstractResolver

from ..ingest.document import Document, DocumentSink
from .fetcher import Fetcher, FetchResult
from .frontier import FAILED, IN_FLIGHT, QUEUED, REDIRECTED, SKIPPED, STORED, Frontier, NewUrl, UrlEntry
from .links import extract_links
from .politeness import FAR_FUTURE, Politeness
from .robots import RobotsBudget, RobotsCache, RobotsResponse
from .settings import CrawlSettings
from .urls import UrlPolicy, canonical_url, origin_of, url_pattern

log = logging.getLogger("crystalline.crawler")

_HTML = frozenset({"text/html", "application/xhtml+xml"})
_THREAD_PARSE_BYTES = 256 * 1024  # larger pages are parsed off the event loop
_LOGGED_REFUSALS = 10  # per page: a page of 10k hostile links must not flood the log


@dataclass(frozen=True)
class FetchRecord:
    """One request, as written to ``--log-jsonl``."""

    url: str
    status: int
    content_type: str
    bytes: int
    elapsed: float
    error: str


@dataclass(frozen=True)
class CrawlSummary:
    """What one ``Crawler.run`` did, and why it ended."""

    reason: str  # "frontier empty", "max pages", "stopped"
    fetched: int  # requests made (robots.txt included)
    stored: int  # pages handed to the sink in this run
    failed: int
    skipped: int
    retried: int
    bytes: int  # body bytes stored in this run
    elapsed: float
    queued: int  # left in the frontier
    stored_total: int  # in this data dir, all runs
    dropped: dict[str, int] = field(default_factory=dict)  # URLs not kept at the caps, per reason
    robots_deferred: int = 0  # times a new host waited for the robots.txt budget

    def line(self) -> str:
        text = (
            f"crawl ended ({self.reason}): {self.stored} pages stored ({self.stored_total} in total), "
            f"{self.fetched} requests, {self.failed} failed, {self.skipped} skipped, {self.retried} retries, "
            f"{self.bytes} bytes in {self.elapsed:.1f} s; {self.queued} URLs queued"
        )
        dropped = sum(self.dropped.values())
        if dropped:
            reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in self.dropped.items() if n)
            text += f", {dropped} dropped at the frontier's caps ({reasons})"
        if self.robots_deferred:
            text += f"; new hosts waited {self.robots_deferred} times for the robots.txt budget"
        return text


class Crawler:
    """A crawl over the frontier in ``settings.data_dir``, storing pages into ``sink``."""

    def __init__(
        self,
        settings: CrawlSettings,
        sink: DocumentSink,
        *,
        resolver: AbstractResolver | None = None,
        on_fetch: Callable[[FetchRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.policy = UrlPolicy(settings)
        self.frontier = Frontier(
            settings.frontier_path,
            settings.max_urls_per_pattern,
            max_queued_per_host=settings.max_queued_per_host,
            max_queued=settings.max_queued,
        )
        self.politeness = Politeness(settings)
        self.robots = RobotsCache(
            self._fetch_robots,
            settings.product_token,
            settings.robots_ttl,
            settings.robots_error_ttl,
            settings.max_robots_cached,
        )
        self.robots_budget = RobotsBudget(settings.robots_per_minute if settings.obey_robots else 0)
        self._robots_deferred = 0
        self._trimming = True  # until the frontier is within its caps (a chunk per loop turn)
        self._resolver = resolver
        self._on_fetch = on_fetch
        self._fetcher: Fetcher | None = None
        self._wake = asyncio.Event()
        self._counts = {"fetched": 0, "stored": 0, "failed": 0, "skipped": 0, "retried": 0, "bytes": 0}

    def close(self) -> None:
        self.frontier.close()

    def add_url(self, url: str) -> bool:
        """Queue a start URL at depth 0 (its host joins the scope unless domains were configured);
        False if it was seen before. Raises ValueError for a URL that may not be fetched."""
        canon = canonical_url(url)
        refused = self.policy.check_fetch(canon)
        if refused:
            raise ValueError(f"cannot crawl {url}: {refused}")
        self.policy.add_seed(canon)
        if not self.policy.in_scope(canon):
            raise ValueError(f"cannot crawl {url}: outside the allowed domains")
        added = self.frontier.add([NewUrl(canon, origin_of(canon), 0)]) == 1
        self._wake.set()
        return added

    def stats(self) -> dict[str, Any]:
        """Counters for the status socket: this run's requests, errors and bytes, the frontier's state,
        its caps and what they dropped (all runs of this data dir)."""
        counts = self.frontier.counts
        s = self.settings
        return {
            "fetched": self._counts["fetched"],
            "stored": self._counts["stored"],
            "stored_total": counts[STORED],
            "queued": counts[QUEUED],
            "in_flight": counts[IN_FLIGHT],
            "errors": self._counts["failed"],
            "skipped": self._counts["skipped"],
            "retried": self._counts["retried"],
            "hosts": self.frontier.hosts,
            "bytes": self._counts["bytes"],
            "frontier_size": sum(counts),  # URL rows: queued, in flight and done
            "frontier_bytes": self.frontier.disk_bytes(),
            "dropped": dict(self.frontier.dropped),
            "robots_fetches": self.robots.fetches,
            "robots_deferred": self._robots_deferred,
            "caps": {
                "links_per_page": s.max_links_per_page,
                "queued_per_host": s.max_queued_per_host,
                "queued": s.max_queued,
                "robots_per_minute": s.robots_per_minute,
            },
        }

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> CrawlSummary:
        """Crawl until the frontier is empty, ``max_pages`` are stored, or ``stop`` is set."""
        start = time.monotonic()
        dropped_before = dict(self.frontier.dropped)
        deferred_before = self._robots_deferred
        tasks: dict[asyncio.Task[None], UrlEntry] = {}
        stop_watch = asyncio.create_task(self._wake_on(stop))
        reason = "stopped"
        async with Fetcher(self.settings, self.policy, self._resolver) as fetcher:
            self._fetcher = fetcher
            try:
                while not stop.is_set():
                    if self._trimming:
                        self._trimming = self.frontier.trim() > 0
                    launched = self._launch(tasks)
                    if not tasks and not launched:
                        if self._pages_left() == 0:
                            reason = "max pages"
                            break
                        if self.frontier.next_ready_at() is None:
                            reason = "frontier empty"
                            break
                    await self._sleep_until_due()
            finally:
                await self._drain(tasks)
                stop_watch.cancel()
                self.frontier.free_hosts()
                self._fetcher = None
        summary = CrawlSummary(
            reason=reason,
            elapsed=time.monotonic() - start,
            queued=self.frontier.counts[QUEUED],
            stored_total=self.frontier.counts[STORED],
            dropped={k: n - dropped_before.get(k, 0) for k, n in self.frontier.dropped.items()},
            robots_deferred=self._robots_deferred - deferred_before,
            **self._counts,
        )
        log.info("%s", summary.line())
        return summary

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _sleep_until_due(self) -> None:
        """Until a request ends, a URL is added, stop is set, or the next host comes due (<= 1 s)."""
        timeout = 1.0
        next_at = self.frontier.next_ready_at()
        if next_at is not None and next_at < FAR_FUTURE:
            timeout = min(timeout, max(next_at - time.time(), 0.005))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _drain(self, tasks: dict[asyncio.Task[None], UrlEntry]) -> None:
        """Let requests in flight finish for ``stop_grace`` seconds, then cancel the rest (their
        URLs go back to the queue)."""
        if not tasks:
            return
        _, pending = await asyncio.wait(list(tasks), timeout=self.settings.stop_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _pages_left(self) -> int | None:
        """Pages the crawl may still start (None: no limit)."""
        if not self.settings.max_pages:
            return None
        counts = self.frontier.counts
        return max(0, self.settings.max_pages - counts[STORED] - counts[IN_FLIGHT])

    def _launch(self, tasks: dict[asyncio.Task[None], UrlEntry]) -> int:
        """Claim URLs of due hosts, as far as concurrency, politeness and limits allow."""
        budget = self.settings.concurrency - len(tasks)
        left = self._pages_left()
        if left is not None:
            budget = min(budget, left)
        if budget <= 0:
            return 0
        now = time.time()
        launched = 0
        for origin in self.frontier.ready_origins(now, budget):
            if launched >= budget:
                break
            slot = self.politeness.slot(origin)
            per_host = self.settings.max_pages_per_host
            if per_host and self.frontier.host_stored(origin) + slot.active >= per_host:
                if slot.active:
                    self.frontier.set_next_at(origin, FAR_FUTURE)
                else:
                    dropped = self.frontier.drop_host_queue(origin, "max pages per host")
                    log.info("host %s: page limit %d reached, %d URLs skipped", origin, per_host, dropped)
                continue
            capacity = self.politeness.capacity(slot)
            if capacity == 0:
                self.frontier.set_next_at(origin, FAR_FUTURE)
                continue
            robots_token = self.settings.obey_robots and self.robots.needs_fetch(origin)
            if robots_token and not self.robots_budget.take():
                self._defer_for_robots(origin)
                continue
            entries = self.frontier.claim(origin, min(capacity, budget - launched), now)
            if not entries:
                if robots_token:
                    self.robots_budget.refund()
                continue
            next_at = now
            for i, entry in enumerate(entries):
                next_at = self.politeness.started(origin)
                # the first entry makes the robots.txt request; the others wait for its answer
                task = asyncio.create_task(self._crawl_one(entry, robots_token and i == 0))
                tasks[task] = entry
                task.add_done_callback(lambda t: self._task_done(tasks, t))
            self.frontier.set_next_at(origin, next_at)
            launched += len(entries)
        return launched

    def _defer_for_robots(self, origin: str) -> None:
        """The robots.txt budget is spent: the new host waits until it has room."""
        self._robots_deferred += 1
        self.frontier.set_next_at(origin, time.time() + self.robots_budget.retry_in())

    def _task_done(self, tasks: dict[asyncio.Task[None], UrlEntry], task: asyncio.Task[None]) -> None:
        tasks.pop(task, None)
        self._wake.set()

    # -- one URL --------------------------------------------------------------------------------

    async def _crawl_one(self, entry: UrlEntry, robots_token: bool = False) -> None:
        """Fetch one claimed URL and settle it; ``robots_token``: a robots.txt request was budgeted
        for it at launch."""
        latency: float | None = None
        ok = False
        try:
            if self.settings.obey_robots and not await self._robots_allow(entry, robots_token):
                return
            assert self._fetcher is not None
            result = await self._fetcher.fetch(
                entry.url, self.settings.content_types, self.settings.max_body_bytes
            )
            self._record(result)
            latency = result.elapsed if result.status else None
            ok = 200 <= result.status < 400
            await self._handle(entry, result)
        except asyncio.CancelledError:
            self.frontier.release(entry)
            raise
        except Exception:
            log.exception("crawl of %s failed", entry.url)
            self._finish(entry, FAILED, 0, "internal error")
        finally:
            self.frontier.set_next_at(entry.origin, self.politeness.finished(entry.origin, latency, ok))

    async def _robots_allow(self, entry: UrlEntry, robots_token: bool) -> bool:
        """Whether robots.txt lets us fetch the URL; settles the entry when it does not."""
        if not robots_token and self.robots.needs_fetch(entry.origin) and not self.robots_budget.take():
            # the rules left the cache since launch and the budget is spent: back to the queue
            self._robots_deferred += 1
            self.politeness.hold(entry.origin, self.robots_budget.retry_in())
            self.frontier.release(entry)
            return False
        rules, fetched_now = await self.robots.rules(entry.origin)
        self.politeness.set_crawl_delay(entry.origin, rules.crawl_delay())
        if rules.unavailable and "refused:" in rules.reason:  # the SSRF guard: final, no retry
            self._finish(entry, SKIPPED, 0, rules.reason)
            return False
        if rules.unavailable:
            self.politeness.hold(entry.origin, self.settings.robots_error_ttl)
            self._retry_or_fail(entry, self.settings.robots_error_ttl, 0, rules.reason)
            return False
        if not rules.allowed(entry.url):
            self._finish(entry, SKIPPED, 0, "disallowed by robots.txt")
            return False
        if fetched_now:
            # the robots.txt request was a request to this host too: keep the gap before the page
            delay = self.politeness.delay(self.politeness.slot(entry.origin))
            if delay > 0:
                await asyncio.sleep(delay)
        return True

    async def _handle(self, entry: UrlEntry, result: FetchResult) -> None:
        s = self.settings
        status = result.status
        if result.retryable:
            self._retry_or_fail(entry, self._backoff(entry), 0, result.error)
        elif result.error.startswith("refused:"):
            self._finish(entry, SKIPPED, status, result.error)  # the URL policy or the SSRF guard
        elif result.error and not status:
            self._finish(entry, FAILED, 0, result.error)
        elif 300 <= status < 400 and result.location:
            self._redirect(entry, result)
        elif status in (429, 503):
            wait = self._backoff(entry)
            if result.retry_after is not None:
                wait = min(result.retry_after, s.max_backoff)
            self.politeness.hold(entry.origin, wait)
            self._retry_or_fail(entry, wait, status, f"HTTP {status}")
        elif status >= 500:
            self._retry_or_fail(entry, self._backoff(entry), status, f"HTTP {status}")
        elif not 200 <= status < 300:
            self._finish(entry, FAILED, status, f"HTTP {status}")  # 4xx: never retried
        elif result.error:
            state = SKIPPED if result.error.startswith("content type") else FAILED
            self._finish(entry, state, status, result.error)
        elif _looks_binary(result):
            self._finish(entry, SKIPPED, status, f"binary body labelled {result.content_type}")
        else:
            await self._store(entry, result)

    async def _store(self, entry: UrlEntry, result: FetchResult) -> None:
        doc = Document(
            source=entry.url,
            body=result.body,
            content_type=result.content_type,
            charset=result.charset,
            origin="crawl",
            fetched_at=time.time(),
        )
        try:
            await asyncio.wait_for(self.sink.submit(doc), self.settings.submit_timeout)
        except TimeoutError:
            log.warning("sink did not take %s in %.0f s; requeued", entry.url, self.settings.submit_timeout)
            self.frontier.release(entry)
            return
        links: list[NewUrl] = []
        if result.content_type in _HTML and entry.depth < self.settings.max_depth:
            if len(result.body) > _THREAD_PARSE_BYTES:
                found = await asyncio.to_thread(extract_links, result.body, entry.url, result.charset)
            else:
                found = extract_links(result.body, entry.url, result.charset)
            links = self._admit(found, entry.depth + 1, 0, entry.url)
        self._counts["stored"] += 1
        self._counts["bytes"] += len(result.body)
        self.frontier.finish(
            entry, STORED, result.status, links=links, max_links=self.settings.max_links_per_page
        )
        log.debug("stored %s (%d bytes, %d links)", entry.url, len(result.body), len(links))

    def _redirect(self, entry: UrlEntry, result: FetchResult) -> None:
        assert result.location is not None
        try:
            target = canonical_url(result.location)
        except ValueError:
            self._finish(entry, FAILED, result.status, "malformed redirect target")
            return
        if entry.redirects >= self.settings.max_redirects:
            self._finish(entry, FAILED, result.status, f"more than {self.settings.max_redirects} redirects")
            return
        refused = self.policy.check_discovered(target)
        links = self._admit([target], entry.depth, entry.redirects + 1, entry.url)
        why = "" if links else f"redirect to {target[:200]} not followed: {refused}"
        if not links:
            self._counts["skipped"] += 1
            log.info("skipped redirect %s -> %s: %s", entry.url, target[:200], refused)
        self._finish(entry, REDIRECTED, result.status, why, links)

    def _admit(self, urls: list[str], depth: int, redirects: int, source: str) -> list[NewUrl]:
        """The URLs that pass the fetch check, scope and trap guards, ready for the frontier.

        Links the fetch check refuses (a scheme other than http(s), a loopback, private or
        link-local address, an overlong URL) are logged, a few per page: on a public page they
        are what an SSRF attempt looks like. Out-of-scope links are routine and only counted."""
        admitted = []
        refused = 0
        for url in urls:
            why = self.policy.check_fetch(url)
            if why is not None:
                refused += 1
                if refused <= _LOGGED_REFUSALS:
                    log.info("skipped link %s on %s: %s", url[:200], source, why)
                continue
            if self.policy.check_discovered(url) is None:
                admitted.append(NewUrl(url, origin_of(url), depth, redirects, url_pattern(url)))
        if refused > _LOGGED_REFUSALS:
            log.info("skipped %d more refused links on %s", refused - _LOGGED_REFUSALS, source)
        return admitted

    # -- bookkeeping ----------------------------------------------------------------------------

    def _backoff(self, entry: UrlEntry) -> float:
        return float(min(self.settings.backoff_base * 2**entry.attempts, self.settings.max_backoff))

    def _retry_or_fail(self, entry: UrlEntry, wait: float, status: int, error: str) -> None:
        if entry.attempts < self.settings.max_retries:
            self._counts["retried"] += 1
            log.info("retry %s in %.1f s: %s", entry.url, wait, error)
            self.frontier.retry(entry, time.time() + wait, status, error)
        else:
            self._finish(entry, FAILED, status, f"{error} (gave up after {entry.attempts + 1} attempts)")

    def _finish(
        self, entry: UrlEntry, state: int, status: int, error: str, links: list[NewUrl] | None = None
    ) -> None:
        if state == FAILED:
            self._counts["failed"] += 1
            log.info("failed %s: %s", entry.url, error)
        elif state == SKIPPED:
            self._counts["skipped"] += 1
            log.info("skipped %s: %s", entry.url, error)
        self.frontier.finish(entry, state, status, error, links or ())

    def _record(self, result: FetchResult) -> None:
        self._counts["fetched"] += 1
        if self._on_fetch is not None:
            elapsed = round(result.elapsed, 6)
            record = FetchRecord(
                result.url, result.status, result.content_type, len(result.body), elapsed, result.error
            )
            self._on_fetch(record)

    async def _fetch_robots(self, origin: str) -> RobotsResponse:
        """GET origin/robots.txt, following up to 5 redirects (RFC 9309 2.3.1.2)."""
        assert self._fetcher is not None
        url = origin + "/robots.txt"
        for _ in range(6):
            result = await self._fetcher.fetch(url, None, self.settings.robots_max_bytes, truncate=True)
            self._record(result)
            if result.location and 300 <= result.status < 400:
                url = result.location
                continue
            if not result.status:
                return RobotsResponse(0, b"", result.error)
            return RobotsResponse(result.status, result.body)
        return RobotsResponse(404, b"", "too many redirects")  # RFC 9309: may treat as unavailable


def _looks_binary(result: FetchResult) -> bool:
    """A NUL byte early in a body labelled as text means the label is wrong (ingest would choke)."""
    textual = result.content_type.startswith("text/") or result.content_type in _HTML
    return textual and b"\x00" in result.body[:1024]
