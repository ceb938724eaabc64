"""The crawl loop: claim URLs from the frontier as politeness allows, fetch them, hand stored pages
to a ``DocumentSink`` and queue their links.

``Crawler`` is the library entry point (the daemon runs one; ``crystalline crawl`` runs one to
completion). A page counts as stored once the sink has acknowledged it (and its WARC records are
on disk, when WARC is on); only then is its URL marked STORED, together with its links and its
next visit, so a crash in between refetches that page, never loses it.

Stored pages come back when their revisit time has come (``schedule``): the request carries the
last ``ETag``/``Last-Modified``; a 304 or a byte-identical body goes to the sink no more, a changed
body goes as a new version. Revisits and new URLs share the requests (``revisit_share``). A host
whose robots.txt cannot be had is deferred with a growing backoff, its URLs kept; a run ends when
only deferred work is left, and says what and until when. A URL shape whose pages stop giving new
text (judged here at fetch, and by ingest through ``feedback``) is cut as a trap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver

from ..documents import Document, DocumentSink
from ..exit_status import one_line
from ..postgres import DatabaseUnavailable
from . import schedule, sitemaps
from .feedback import IngestFeedback
from .fetcher import Fetcher, FetchResult
from .frontier import (
    DROP_ROBOTS,
    FAILED,
    IN_FLIGHT,
    QUEUED,
    REDIRECTED,
    SITEMAP,
    SKIPPED,
    STORED,
    NewUrl,
    Revisit,
    UrlEntry,
)
from .frontier_pg import open_frontier
from .links import parse_page
from .politeness import FAR_FUTURE, Politeness
from .robots import RobotsBudget, RobotsCache, RobotsResponse, RobotsRules
from .settings import CrawlSettings
from .shapes import TextNovelty
from .urls import UrlPolicy, canonical_url, origin_of, url_pattern
from .warc import WarcWriter

log = logging.getLogger("crystalline.crawler")

_HTML = frozenset({"text/html", "application/xhtml+xml"})
_THREAD_PARSE_BYTES = 256 * 1024  # larger pages are parsed off the event loop
_LOGGED_REFUSALS = 10  # per page: a page of 10k hostile links must not flood the log
_FEEDBACK_EVERY_S = 5.0  # how often ingest's verdicts are read
_FEEDBACK_BUDGET_S = 0.5  # at most this long each time (1,000 verdicts a read): the loop waits
_PROMOTE_EVERY_S = 1.0  # how often due revisits are looked for while other work runs
# how often status's reads of the frontier's tables (the per-host table, the deferred hosts, the
# size, the next revisit) are made again: status is asked often, the host table sorts every host,
# and with --database each read is a statement on the crawl's loop
_FRONTIER_READ_EVERY_S = 5.0
_NEVER_READ = {"hosts": [], "deferred_hosts": 0, "frontier_bytes": None, "next_revisit": None}
_DEFERRED_SHOWN = 20  # deferred hosts listed in a summary
_ROBOTS_PRUNE_EVERY_S = 3600.0  # how often robots.txt rows past their lifetime are deleted
_LONG_RETRY_AFTER_S = 60.0  # a longer Retry-After defers the host (as a robots.txt 503 does)
_DISK_PROBE_MAX_S = 60.0  # while the disk is full, one fetch at most this often tries a write
ONLY_DEFERRED = "only deferred work left"


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
    revisits: int = 0  # revisits made in this run, of which:
    not_modified: int = 0  # ... answered 304
    unchanged: int = 0  # ... with the same body
    changed: int = 0  # ... with a new body (handed to the sink as a new version)
    deferred: list[tuple[str, str, float, int]] = field(default_factory=list)  # (origin, why, until, queued)

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
        if self.revisits:
            text += (
                f"; {self.revisits} revisits ({self.not_modified} not modified, {self.unchanged} unchanged, "
                f"{self.changed} changed)"
            )
        if self.deferred:
            first = time.strftime("%H:%M:%S", time.localtime(min(d[2] for d in self.deferred)))
            hosts = f"{len(self.deferred)} host{'s' if len(self.deferred) > 1 else ''}"
            text += f"; {hosts} deferred (the first retry at {first})"
        return text

    def deferred_lines(self) -> list[str]:
        """A line per deferred host (the first ``_DEFERRED_SHOWN``): why, and when to retry."""
        lines = []
        for origin, why, until, queued in self.deferred[:_DEFERRED_SHOWN]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
            lines.append(f"deferred: {origin}: {why}; retry after {when} ({queued} URLs queued)")
        if len(self.deferred) > _DEFERRED_SHOWN:
            lines.append(f"deferred: {len(self.deferred) - _DEFERRED_SHOWN} more hosts")
        if self.deferred:
            lines.append("run the same crawl again to resume it")
        return lines


class Crawler:
    """A crawl over the frontier in ``settings.data_dir``, storing pages into ``sink``.

    ``feedback`` reads ingest's verdicts on the pages (the daemon passes its registry's)."""

    def __init__(
        self,
        settings: CrawlSettings,
        sink: DocumentSink,
        *,
        resolver: AbstractResolver | None = None,
        on_fetch: Callable[[FetchRecord], None] | None = None,
        feedback: IngestFeedback | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.policy = UrlPolicy(settings)
        self.frontier = open_frontier(
            settings.database,
            settings.frontier_path,
            settings.host_lease,
            settings.database_timeout_s,
            max_queued_per_host=settings.max_queued_per_host,
            max_queued=settings.max_queued,
            max_pages_per_host=settings.max_pages_per_host,
            max_listed_per_host_per_day=settings.max_listed_per_host_per_day,
        )
        self.politeness = Politeness(settings)
        self.robots = RobotsCache(
            self._fetch_robots,
            settings.product_token,
            settings.robots_ttl,
            settings.robots_error_ttl,
            settings.max_robots_cached,
            store=self.frontier,
        )
        self.robots_budget = RobotsBudget(settings.robots_per_minute if settings.obey_robots else 0)
        self.novelty = TextNovelty()
        self.feedback = feedback
        self.warc = (
            WarcWriter(settings.warc_dir, settings.warc_file_bytes, settings.warc_max_bytes)
            if settings.warc_dir is not None
            else None
        )
        self._rng = random.Random()
        self._robots_deferred = 0
        self._trimming = True  # until the frontier is within its caps (a chunk per loop turn)
        self._resolver = resolver
        self._on_fetch = on_fetch
        self._fetcher: Fetcher | None = None
        self._wake = asyncio.Event()
        self._run_started = 0.0
        self._next_promote = 0.0
        self._next_feedback = 0.0
        self._launched = {"new": 0, "revisit": 0}
        self._revisits_in_flight = 0
        self._counts = {"fetched": 0, "stored": 0, "failed": 0, "skipped": 0, "retried": 0, "bytes": 0}
        self._by_status: Counter[str] = Counter()  # this run's requests by HTTP status class
        self._revisit_counts = {"revisits": 0, "not_modified": 0, "unchanged": 0, "changed": 0}
        self._final_stats: dict[str, Any] | None = None
        self._frontier_read: tuple[float, dict[str, Any]] = (float("-inf"), _NEVER_READ)  # (when, what)
        # a WARC or spool write failed (a full disk): no new fetch but one probe at a time, at
        # _disk_probe_at, until a write works again
        self._disk_error: str | None = None
        self._next_robots_prune = 0.0
        self._disk_failures = 0
        self._disk_probe_at = 0.0
        # the shared database (--database) did not answer: why, since when, the current backoff
        self._database_error: str | None = None
        self._database_since = 0.0
        self._database_wait = 0.0
        self._next_lease_renewal = 0.0

    def close(self) -> None:
        if self.warc is not None:
            self.warc.close()
        self._frontier_read = (float("-inf"), self._frontier_read[1])  # the final reads, fresh
        self._final_stats = self.stats()  # what stats() answers from now on
        self.frontier.close()
        if self.feedback is not None:
            self.feedback.close()

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
        added = self.frontier.add([NewUrl(canon, origin_of(canon), 0, pattern=url_pattern(canon))]) == 1
        self._wake.set()
        return added

    def stats(self) -> dict[str, Any]:
        """Counters for the status socket: this run's requests (``by_status``: per HTTP status
        class, robots.txt and sitemaps included), errors and bytes, the frontier's state,
        its caps and what they dropped (all runs of this data dir), revisits, deferred hosts and a
        line per host (``hosts``: deferred ones first, then the busiest; ``host_count`` in all).
        What is read from the frontier's tables is ``frontier_read_age_s`` old (_frontier_reads)."""
        if self._final_stats is not None:
            return self._final_stats
        counts = self.frontier.counts
        s = self.settings
        now = time.time()
        read = self._frontier_reads(now)
        return {
            "fetched": self._counts["fetched"],
            "by_status": dict(sorted(self._by_status.items())),
            "stored": self._counts["stored"],
            "stored_total": self.frontier.stored_total,
            "queued": counts[QUEUED],
            "in_flight": counts[IN_FLIGHT],
            "errors": self._counts["failed"],
            "skipped": self._counts["skipped"],
            "retried": self._counts["retried"],
            "host_count": self.frontier.hosts,
            "hosts": read["hosts"],
            "bytes": self._counts["bytes"],
            "frontier_size": sum(counts) + self.frontier.revisits_queued,  # URL rows
            "frontier_bytes": read["frontier_bytes"],
            "dropped": dict(self.frontier.dropped),
            "robots_fetches": self.robots.fetches,
            "robots_deferred": self._robots_deferred,
            "revisits": {
                **self._revisit_counts,
                "queued": self.frontier.revisits_queued,
                "new_versions": self.frontier.new_versions,  # all runs: changed pages handed over again
            },
            "next_revisit": read["next_revisit"],
            "frontier_read_age_s": read["age_s"],
            # where the frontier lives; with --database, whether it answers and the crawl's state
            "database": {
                **self.frontier.backend(),
                "crawl": "paused: database unavailable" if self._database_error else "running",
                "error": self._database_error,
                "since": round(self._database_since, 1) if self._database_error else None,
            },
            "deferred_hosts": read["deferred_hosts"],
            "traps": len(self.frontier.trapped),
            **({"warc": self.warc.stats()} if self.warc is not None else {}),
            "caps": {
                "links_per_page": s.max_links_per_page,
                "queued_per_host": s.max_queued_per_host,
                "queued": s.max_queued,
                "robots_per_minute": s.robots_per_minute,
                "fetches_per_host_per_day": s.max_fetches_per_host_per_day,
            },
        }

    def next_work_at(self) -> float:
        """When there may be work again after a run ended: the earliest of the next due revisit,
        the end of a host's deferral and the next queued URL's time (unix time; far off: none)."""
        now = time.time()
        times = [self.frontier.next_visit_at(), self.frontier.next_ready_at()]
        times += [until for _, _, until, _ in self.frontier.deferred(now, 1)]
        return min((t for t in times if t is not None), default=FAR_FUTURE)

    def _frontier_reads(self, now: float) -> dict[str, Any]:
        """What status reads from the frontier's tables: the per-host table, the deferred hosts'
        count, the size and the next revisit, with ``age_s`` (since they were read; None: never).
        Read again at most every ``_FRONTIER_READ_EVERY_S``, and not while the database is known
        to be away (each statement would wait out its deadline on the crawl's loop): the last
        values stay, their age growing, until the crawl finds the database back."""
        read_at, values = self._frontier_read
        if now - read_at >= _FRONTIER_READ_EVERY_S and not self.database_away():
            try:
                values = {
                    "hosts": [h.as_dict(now) for h in self.frontier.host_reports(50)],
                    "deferred_hosts": len(self.frontier.deferred(now, 1000)),
                    "frontier_bytes": self.frontier.disk_bytes(),
                    "next_revisit": self.frontier.next_visit_at(),
                }
                read_at = now
                self._frontier_read = (read_at, values)
            except DatabaseUnavailable:  # known away from now on: the last values stay
                pass
        age = None if read_at == float("-inf") else round(max(now - read_at, 0.0), 1)
        return {**values, "age_s": age}

    def database_away(self) -> bool:
        """The shared database did not answer the crawl's or the frontier's last statement."""
        return self._database_error is not None or self.frontier.backend().get("available") is False

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> CrawlSummary:
        """Crawl until nothing is left to do now (the queue is empty, no revisit is due, or only
        deferred hosts hold URLs), ``max_pages`` are stored, or ``stop`` is set. A one-shot run
        (``revisit_after`` set) or one with no minimum interval never revisits a page it fetched
        itself: the next run does; the daemon's pass revisits pages as they come due."""
        start = time.monotonic()
        self._run_started = time.time()
        if self.settings.revisit_after is not None:
            due = self.frontier.due_after(self.settings.revisit_after, self._run_started)
            if due:
                log.info("%d pages fetched %.0f s ago or more are due", due, self.settings.revisit_after)
        dropped_before = dict(self.frontier.dropped)
        deferred_before = self._robots_deferred
        counts_before = dict(self._counts)
        revisits_before = dict(self._revisit_counts)
        tasks: dict[asyncio.Task[None], UrlEntry] = {}
        stop_watch = asyncio.create_task(self._wake_on(stop))
        reason = "stopped"
        async with Fetcher(self.settings, self.policy, self._resolver) as fetcher:
            self._fetcher = fetcher
            try:
                while not stop.is_set():
                    try:
                        self.frontier.settle_pending()  # outcomes kept through a database outage
                        self._renew_leases(tasks)
                        if self._trimming:
                            self._trimming = self.frontier.trim() > 0
                        self._read_feedback()
                        self._prune_robots()
                        self._promote(force=not tasks)
                        launched = self._launch(tasks)
                        self._database_up()  # before a break below: a pass may end on this turn
                        if not tasks and not launched:
                            if self._pages_left() == 0:
                                reason = "max pages"
                                break
                            self.frontier.release_done_hosts()  # nothing in flight: others may end
                            next_at = self.frontier.next_ready_at()
                            # FAR_FUTURE with nothing in flight: no host will ever be asked again
                            if next_at is None or next_at >= FAR_FUTURE:
                                deferred = self.frontier.deferred(time.time(), 1)
                                reason = ONLY_DEFERRED if deferred else "frontier empty"
                                break
                        await self._sleep_until_due()
                    except DatabaseUnavailable as exc:  # PostgreSQL restarted or cut off: wait, retry
                        await self._database_down(exc, stop)
            finally:
                await self._drain(tasks)
                if self.warc is not None:  # writes of cancelled fetches end before close()
                    await self.warc.drain()
                stop_watch.cancel()
                with contextlib.suppress(DatabaseUnavailable):  # its leases then simply run out
                    self.frontier.free_hosts()
                self._fetcher = None
        now = time.time()
        summary = CrawlSummary(
            reason=reason,
            elapsed=time.monotonic() - start,
            queued=self.frontier.counts[QUEUED],
            stored_total=self.frontier.stored_total,
            dropped={k: n - dropped_before.get(k, 0) for k, n in self.frontier.dropped.items()},
            robots_deferred=self._robots_deferred - deferred_before,
            deferred=self.frontier.deferred(now, 1000),
            **{k: n - counts_before[k] for k, n in self._counts.items()},
            **{k: n - revisits_before[k] for k, n in self._revisit_counts.items()},
        )
        log.info("%s", summary.line())
        return summary

    def _renew_leases(self, tasks: dict[asyncio.Task[None], UrlEntry]) -> None:
        """Keep the leases of the hosts this crawler has requests in flight to (a third of a
        lease apart; a SQLite frontier has no leases)."""
        now = time.time()
        if tasks and now >= self._next_lease_renewal:
            self._next_lease_renewal = now + self.settings.host_lease / 3
            self.frontier.renew_leases((e.origin for e in tasks.values()), now)

    async def _database_down(self, exc: DatabaseUnavailable, stop: asyncio.Event) -> None:
        """The shared database is away: no new work; wait (doubling, at most 30 s) and retry.
        Requests in flight go on; their outcomes wait in the frontier."""
        if self._database_error is None:
            log.warning("crawl paused: %s", exc)
            self._database_since = time.time()
        self._database_error = one_line(exc)
        self._database_wait = min(30.0, max(0.5, self._database_wait * 2))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), self._database_wait)

    def _database_up(self) -> None:
        if self._database_error is not None:
            away = time.time() - self._database_since
            log.warning("crawl resumed: the database answers again after %.0f s", away)
        self._database_error = None
        self._database_wait = 0.0

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _sleep_until_due(self) -> None:
        """Until a request ends, a URL is added, stop is set, or the next host comes due (<= 1 s)."""
        timeout = 1.0
        next_at = self.frontier.next_ready_at()
        if self._disk_error is not None:  # nothing starts before the next probe
            next_at = max(next_at or 0.0, self._disk_probe_at)
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

    def _read_feedback(self) -> None:
        """Apply ingest's newest verdicts (every few seconds), a read of 1,000 after another until
        caught up or _FEEDBACK_BUDGET_S is spent (one read each time fell behind an ingest of more
        than 200 documents a second)."""
        now = time.monotonic()
        if self.feedback is None or now < self._next_feedback:
            return
        self._next_feedback = now + _FEEDBACK_EVERY_S
        deadline = now + _FEEDBACK_BUDGET_S
        cursor = self.frontier.feedback_cursor()
        while True:
            verdicts, new_cursor = self.feedback.since(cursor)
            if new_cursor == cursor:
                return
            self.frontier.ingest_verdicts(verdicts, new_cursor, self.settings.revisit_inc_rate)
            cursor = new_cursor
            if time.monotonic() >= deadline:
                return

    def _prune_robots(self) -> None:
        """Delete stored robots.txt rows older than their lifetime (hourly): they are never reused,
        and would otherwise pile up, one for every host ever seen."""
        now = time.monotonic()
        if now < self._next_robots_prune:
            return
        self._next_robots_prune = now + _ROBOTS_PRUNE_EVERY_S
        pruned = self.frontier.prune_robots(time.time() - self.settings.robots_ttl)
        if pruned:
            log.info("%d stored robots.txt older than %.0f s deleted", pruned, self.settings.robots_ttl)

    def _promote(self, force: bool) -> None:
        """Bring due revisits into the queue, within their share of the requests while new URLs
        wait (all of the requests when none do)."""
        now = time.time()
        if not force and now < self._next_promote:
            return
        self._next_promote = now + _PROMOTE_EVERY_S
        s = self.settings
        room = 2 * s.concurrency - self.frontier.revisits_queued
        if self.frontier.counts[QUEUED] > 0:  # new URLs wait: revisits get their share
            total = self._launched["new"] + self._launched["revisit"]
            room = min(room, int(s.revisit_share * (total + s.concurrency)) - self._launched["revisit"])
        # A one-shot run (revisit_after set) revisits what was due when it started; so does a pass
        # with no minimum interval (its pages would be due again as soon as fetched). The daemon's
        # pass otherwise revisits whatever comes due: on a real crawl it never runs out of new URLs.
        one_pass = s.revisit_after is not None or s.min_revisit == 0
        before = self._run_started if one_pass else None
        if room > 0 and self.frontier.promote_due(now, room, fetched_before=before):
            self._wake.set()

    def _pages_left(self) -> int | None:
        """New pages the crawl may still start (None: no limit)."""
        if not self.settings.max_pages:
            return None
        new_in_flight = self.frontier.counts[IN_FLIGHT] - self._revisits_in_flight
        return max(0, self.settings.max_pages - self.frontier.stored_total - new_in_flight)

    def _launch(self, tasks: dict[asyncio.Task[None], UrlEntry]) -> int:
        """Claim URLs of due hosts, as far as concurrency, politeness and limits allow."""
        s = self.settings
        budget = s.concurrency - len(tasks)
        if self._disk_error is not None:  # one probe at a time, when its time has come
            budget = 1 if not tasks and time.time() >= self._disk_probe_at else 0
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
            max_new: int | None = None
            per_host = s.max_pages_per_host
            if per_host:
                # the pages it may still store, those in flight counted as stored (a revisit in
                # flight too: the bound is at most stricter by the revisits in flight)
                max_new = max(0, per_host - self.frontier.host_stored(origin) - slot.active)
                if max_new == 0 and not slot.active:
                    dropped = self.frontier.drop_host_queue(origin, "max pages per host")
                    if dropped:
                        log.info("host %s: page limit %d reached, %d URLs skipped", origin, per_host, dropped)
                # at 0 its stored pages are still revisited
            per_day = s.max_fetches_per_host_per_day
            day_left = budget
            if per_day:
                done_today, day_ends = self.frontier.day_fetches(origin, now)  # in flight included
                day_left = per_day - done_today
                if day_left <= 0:
                    why = f"daily budget of {per_day} requests spent"
                    self.frontier.defer_host(origin, day_ends, why, now, count=False)
                    continue
            capacity = self.politeness.capacity(slot)
            if capacity == 0:
                self.frontier.set_next_at(origin, FAR_FUTURE)
                continue
            robots_token = s.obey_robots and self.robots.needs_fetch(origin)
            if robots_token and not self.robots_budget.take():
                self._defer_for_robots(origin)
                continue
            entries = self.frontier.claim(origin, min(capacity, budget - launched, day_left), now, max_new)
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
                self._launched["revisit" if entry.revisit else "new"] += 1
                self._revisits_in_flight += entry.revisit
            self.frontier.set_next_at(origin, next_at)
            launched += len(entries)
        return launched

    def _defer_for_robots(self, origin: str) -> None:
        """The robots.txt budget is spent: the new host waits until it has room."""
        self._robots_deferred += 1
        self.frontier.set_next_at(origin, time.time() + self.robots_budget.retry_in())

    def _task_done(self, tasks: dict[asyncio.Task[None], UrlEntry], task: asyncio.Task[None]) -> None:
        entry = tasks.pop(task, None)
        if entry is not None and entry.revisit:
            self._revisits_in_flight -= 1
        self._wake.set()

    # -- one URL --------------------------------------------------------------------------------

    async def _crawl_one(self, entry: UrlEntry, robots_token: bool = False) -> None:
        """Fetch one claimed URL and settle it; ``robots_token``: a robots.txt request was budgeted
        for it at launch."""
        latency: float | None = None
        ok = False
        # whether a request went to the host (the robots.txt request of robots_token included):
        # a URL robots.txt disallows costs the host no delay
        requested = robots_token
        s = self.settings
        try:
            if s.obey_robots and not await self._robots_allow(entry, robots_token):
                return
            assert self._fetcher is not None
            requested = True
            headers = {}
            if entry.revisit and entry.etag:
                headers["If-None-Match"] = entry.etag
            if entry.revisit and entry.last_modified:
                headers["If-Modified-Since"] = entry.last_modified
            if entry.kind == SITEMAP:
                result = await self._fetcher.fetch(entry.url, None, s.sitemap_max_bytes, True, headers)
            else:
                result = await self._fetcher.fetch(
                    entry.url, s.content_types, s.max_body_bytes, False, headers
                )
            self._record(result)
            latency = result.elapsed if result.status else None
            ok = 200 <= result.status < 400
            if self.warc is not None and result.status:
                cut = entry.kind == SITEMAP and len(result.body) >= s.sitemap_max_bytes
                try:
                    await self.warc.write(result, cut=cut)
                except OSError as exc:  # a full disk: the URL is not done without its records
                    self._disk_full(entry, one_line(exc))
                    return
                self._disk_works()
            await self._handle(entry, result)
        except asyncio.CancelledError:
            self.frontier.release(entry)
            raise
        except DatabaseUnavailable as exc:  # a read it needed (robots.txt, deferral): fetched later
            log.warning("%s goes back to the queue: %s", entry.url, exc)
            self.frontier.release(entry)
        except Exception:
            log.exception("crawl of %s failed", entry.url)
            self._finish(entry, FAILED, 0, "internal error")
        finally:
            next_at = self.politeness.finished(entry.origin, latency, ok, requested)
            self.frontier.set_next_at(entry.origin, next_at)

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
            self._defer_unavailable(entry, rules)
            return False
        if fetched_now:
            self.frontier.undefer_host(entry.origin)
            self._queue_sitemaps(entry.origin, rules)
        if not rules.allowed(entry.url):
            self._finish(entry, SKIPPED, 0, "disallowed by robots.txt")
            return False
        if fetched_now:
            # the robots.txt request was a request to this host too: keep the gap before the page
            delay = self.politeness.delay(self.politeness.slot(entry.origin))
            if delay > 0:
                await asyncio.sleep(delay)
        return True

    def _defer_unavailable(self, entry: UrlEntry, rules: RobotsRules) -> None:
        """robots.txt could not be had (5xx, unreachable): the host and its URLs wait, with a
        backoff that grows each time in a row (RFC 9309 2.3.1.4: assume complete disallow)."""
        now = time.time()
        if self.frontier.deferred_until(entry.origin) <= now:  # the first of its requests to learn it
            wait = schedule.defer_wait(self.settings, self.frontier.defer_count(entry.origin), self._rng)
            self.frontier.defer_host(entry.origin, now + wait, rules.reason, now)
            self.robots.forget(entry.origin)  # asked again when the deferral ends
            log.info("host %s deferred for %.0f s: %s", entry.origin, wait, rules.reason)
        self.frontier.release(entry)

    def _defer_retry_after(self, entry: UrlEntry, status: int, retry_after: float) -> None:
        """The host asked for a long pause (Retry-After over a minute, up to a day): it is deferred
        that long with its URLs kept, no attempt counted (before, the wait was cut to max_backoff
        and the URL failed after its retries); a one-shot crawl ends and lists it."""
        now = time.time()
        wait = min(retry_after, 86400.0)
        self.politeness.hold(entry.origin, wait)
        self.frontier.defer_host(entry.origin, now + wait, f"HTTP {status} Retry-After", now)
        log.info("host %s deferred for %.0f s: HTTP %d with Retry-After", entry.origin, wait, status)
        self.frontier.release(entry)

    def _queue_sitemaps(self, origin: str, rules: RobotsRules) -> None:
        """A host's sitemaps (its robots.txt's Sitemap: lines and /sitemap.xml) join the frontier."""
        if not self.settings.sitemaps:
            return
        found = []
        for url in [*rules.sitemaps(), origin + "/sitemap.xml"]:
            with contextlib.suppress(ValueError):
                found.append(canonical_url(url))
        admitted = [
            NewUrl(u, origin_of(u), 0, kind=SITEMAP)
            for u in dict.fromkeys(found)
            if self.policy.check_discovered(u) is None
        ]
        if admitted:
            self.frontier.add(admitted)

    def _queue_feeds(self, feeds: list[str], depth: int) -> None:
        """A page's feeds join the frontier at the page's depth (their items one hop further)."""
        admitted = [
            NewUrl(u, origin_of(u), depth, kind=SITEMAP)
            for u in feeds
            if self.policy.check_discovered(u) is None
        ]
        if admitted:
            self.frontier.add(admitted)

    async def _handle(self, entry: UrlEntry, result: FetchResult) -> None:
        s = self.settings
        status = result.status
        if result.retryable:
            self._retry_or_fail(entry, self._backoff(entry), 0, result.error)
        elif result.error.startswith("refused:"):
            self._finish(entry, SKIPPED, status, result.error)  # the URL policy or the SSRF guard
        elif result.error and not status:
            self._finish(entry, FAILED, 0, result.error)
        elif status == 304 and entry.revisit:
            self._revisit_counts["not_modified"] += 1
            self._keep(entry, result, changed=False)
        elif 300 <= status < 400 and result.location:
            self._redirect(entry, result)
        elif status in (429, 503) and (result.retry_after or 0.0) > _LONG_RETRY_AFTER_S:
            self._defer_retry_after(entry, status, result.retry_after or 0.0)
        elif status in (429, 503):
            wait = self._backoff(entry)
            if result.retry_after is not None:
                wait = min(result.retry_after, s.max_backoff)
            self.politeness.hold(entry.origin, wait)
            self._retry_or_fail(entry, wait, status, f"HTTP {status}")
        elif status >= 500:
            self._retry_or_fail(entry, self._backoff(entry), status, f"HTTP {status}")
        elif not 200 <= status < 300 and entry.kind == SITEMAP:
            self._finish(entry, SKIPPED, status, f"no sitemap (HTTP {status})")  # most sites have none
        elif not 200 <= status < 300:
            self._finish(entry, FAILED, status, f"HTTP {status}")  # 4xx: never retried (a revisit: gone)
        elif result.error:
            state = SKIPPED if result.error.startswith("content type") else FAILED
            self._finish(entry, state, status, result.error)
        elif _looks_binary(result):
            self._finish(entry, SKIPPED, status, f"binary body labelled {result.content_type}")
        elif entry.kind == SITEMAP:
            await self._read_sitemap(entry, result)
        else:
            await self._store(entry, result)

    def _keep(
        self, entry: UrlEntry, result: FetchResult, changed: bool, body_hash: str | None = None
    ) -> None:
        """A revisit found nothing new (a 304 or the same body): the page stays as it was, its
        next visit further away."""
        now = time.time()
        interval = schedule.next_interval(self.settings, entry.interval, changed, _host(entry.url))
        revisit = Revisit(
            now + interval, interval, entry.interval, now, result.etag, result.last_modified, body_hash
        )
        if not changed and result.status != 304:
            self._revisit_counts["unchanged"] += 1
        self._revisit_counts["revisits"] += 1
        self.frontier.finish(entry, STORED, result.status, revisit=revisit)

    async def _store(self, entry: UrlEntry, result: FetchResult) -> None:
        body_hash = hashlib.sha256(result.body).hexdigest()
        if entry.revisit and body_hash == entry.body_hash:
            self._keep(entry, result, changed=False)
            return
        now = time.time()
        doc = Document(
            source=entry.url,
            body=result.body,
            content_type=result.content_type,
            charset=result.charset,
            origin="crawl",
            fetched_at=now,
        )
        try:
            await asyncio.wait_for(self.sink.submit(doc), self.settings.submit_timeout)
        except TimeoutError:
            log.warning("sink did not take %s in %.0f s; requeued", entry.url, self.settings.submit_timeout)
            self.frontier.release(entry)
            return
        except OSError as exc:  # the spool's disk is full
            self._disk_full(entry, f"cannot spool {entry.url}: {exc}")
            return
        self._disk_works()
        links: list[NewUrl] = []
        fresh: bool | None = None
        if result.content_type in _HTML:
            if len(result.body) > _THREAD_PARSE_BYTES:
                found, text, feeds = await asyncio.to_thread(
                    parse_page, result.body, entry.url, result.charset
                )
            else:
                found, text, feeds = parse_page(result.body, entry.url, result.charset)
            if feeds and self.settings.sitemaps and entry.depth < self.settings.max_depth:
                self._queue_feeds(feeds, entry.depth)  # read as a sitemap (sitemaps.org allows it)
            if not entry.revisit and entry.pattern is not None:
                # does this shape still give new text? (the trap guard: finish() counts it, with
                # the new URLs of other shapes the page gave; a shape that gives neither is cut)
                fresh = self.novelty.novel(entry.origin, entry.pattern, text)
            if entry.depth < self.settings.max_depth:
                links = self._admit(found, entry.depth + 1, 0, entry.url)
        if entry.revisit:
            self._revisit_counts["revisits"] += 1
            self._revisit_counts["changed"] += 1
            interval = schedule.next_interval(self.settings, entry.interval, True, _host(entry.url))
        else:
            interval = schedule.first_interval(self.settings, entry.interval, _host(entry.url))
        revisit = Revisit(
            now + interval,
            interval,
            entry.interval or interval,
            now,
            result.etag,
            result.last_modified,
            body_hash,
            new_version=True,
            fresh=fresh,
        )
        self._counts["stored"] += 1
        self._counts["bytes"] += len(result.body)
        self.frontier.finish(
            entry,
            STORED,
            result.status,
            links=links,
            max_links=self.settings.max_links_per_page,
            revisit=revisit,
        )
        log.debug("stored %s (%d bytes, %d links)", entry.url, len(result.body), len(links))

    async def _read_sitemap(self, entry: UrlEntry, result: FetchResult) -> None:
        """Queue what a sitemap (or sitemap index, or feed) lists, in scope as any link; a stored
        page whose ``lastmod`` is newer than its last fetch becomes due now."""
        s = self.settings
        body_hash = hashlib.sha256(result.body).hexdigest()
        if entry.revisit and body_hash == entry.body_hash:
            self._keep(entry, result, changed=False)
            return
        parsed = await asyncio.to_thread(sitemaps.parse, result.body, s.sitemap_max_bytes, s.sitemap_max_urls)
        if parsed.truncated:
            log.info("sitemap %s: read in part (%s)", entry.url, parsed.truncated)
        urls = []
        for item in parsed.entries:
            with contextlib.suppress(ValueError):
                urls.append((canonical_url(item.loc), item))
        # a sitemap's pages are one hop from the start; a feed's one hop from the page linking it
        # (a feed found on a page is queued at that page's depth; a sitemap's depth counts indexes)
        depth = entry.depth + 1 if parsed.feed else 1
        if depth > s.max_depth:
            urls = []
        admitted = {u.url: u for u in self._admit([u for u, _ in urls], depth, 0, entry.url)}
        links: list[NewUrl] = []
        changed: list[tuple[str, float]] = []
        for url, item in urls:
            new = admitted.get(url)
            if new is None:
                continue
            if parsed.kind == sitemaps.INDEX:
                if entry.depth < s.sitemap_max_depth:
                    links.append(NewUrl(url, new.origin, entry.depth + 1, kind=SITEMAP))
                continue
            hint = schedule.CHANGEFREQ.get((item.changefreq or "").lower(), 0.0)
            links.append(NewUrl(url, new.origin, depth, 0, new.pattern, hint, listed=True))
            if item.lastmod is not None:
                changed.append((url, item.lastmod))
        now = time.time()
        due = self.frontier.mark_changed(changed, now)
        if due:
            self._wake.set()
        if entry.revisit:
            self._revisit_counts["revisits"] += 1
            self._revisit_counts["changed"] += 1
            interval = schedule.next_interval(s, entry.interval, True, _host(entry.url))
        else:
            interval = schedule.first_interval(s, host=_host(entry.url))
        revisit = Revisit(
            now + interval, interval, entry.interval or interval, now, result.etag, result.last_modified,
            body_hash, new_version=True,
        )  # fmt: skip
        added = self.frontier.finish(
            entry, STORED, result.status, links=links, max_links=s.sitemap_max_urls, revisit=revisit
        )
        log.info(
            "sitemap %s: %d URLs listed, %d new, %d stored pages due again", entry.url, len(urls), added, due
        )

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
        refused = refused or "refused by the fetch check or robots.txt"
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
        refused = disallowed = 0
        for url in urls:
            why = self.policy.check_fetch(url)
            if why is not None:
                refused += 1
                if refused <= _LOGGED_REFUSALS:
                    log.info("skipped link %s on %s: %s", url[:200], source, why)
                continue
            if self.policy.check_discovered(url) is not None:
                continue
            origin = origin_of(url)
            # robots.txt known now disallows it: no row, no claim, no skip (the rules are cached in
            # memory for a day; a host whose rules are not known yet is judged at fetch)
            rules = self.robots.known(origin) if self.settings.obey_robots else None
            if rules is not None and not rules.allowed(url):
                disallowed += 1
                continue
            admitted.append(NewUrl(url, origin, depth, redirects, url_pattern(url)))
        self.frontier.note_drops(DROP_ROBOTS, disallowed)
        if refused > _LOGGED_REFUSALS:
            log.info("skipped %d more refused links on %s", refused - _LOGGED_REFUSALS, source)
        return admitted

    # -- bookkeeping ----------------------------------------------------------------------------

    def _disk_full(self, entry: UrlEntry, error: str) -> None:
        """A write the URL needs failed (WARC or spool: a full disk, for now): the URL goes back to
        the queue without an attempt counted (a disk full for longer than the retries must not
        fail URLs for good), and no new fetch starts but one probe, at a growing interval."""
        if self._disk_error is None:
            log.error("%s; fetching paused until a write works", error)
        self._disk_error = error
        wait = min(self.settings.backoff_base * 2 ** min(self._disk_failures, 16), self.settings.max_backoff,
                   _DISK_PROBE_MAX_S)  # fmt: skip
        self._disk_failures += 1
        self._disk_probe_at = time.time() + wait
        self._counts["retried"] += 1
        self.frontier.retry(entry, self._disk_probe_at, 0, error, count_attempt=False)

    def _disk_works(self) -> None:
        if self._disk_error is not None:
            log.info("writes work again; fetching resumes")
        self._disk_error = None
        self._disk_failures = 0

    def _backoff(self, entry: UrlEntry) -> float:
        return float(min(self.settings.backoff_base * 2**entry.attempts, self.settings.max_backoff))

    def _retry_or_fail(self, entry: UrlEntry, wait: float, status: int, error: str) -> None:
        if entry.attempts < self.settings.max_retries:
            self._counts["retried"] += 1
            log.info("retry %s in %.1f s: %s", entry.url, wait, error)
            self.frontier.retry(entry, time.time() + wait, status, error)
        elif entry.revisit:  # a stored page that failed for now: kept, asked again at its next visit
            now = time.time()
            interval = schedule.next_interval(self.settings, entry.interval, False, _host(entry.url))
            revisit = Revisit(now + interval, interval, entry.interval, now)
            self._revisit_counts["revisits"] += 1
            log.info("revisit of %s failed (%s); next visit in %.0f s", entry.url, error, interval)
            self.frontier.finish(entry, STORED, status, error, revisit=revisit)
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
        self._by_status[status_class(result.status)] += 1
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
            if self.warc is not None and result.status:
                try:
                    await self.warc.write(result, cut=len(result.body) >= self.settings.robots_max_bytes)
                except OSError as exc:  # the rules still count; status shows the WARC's error
                    log.error("%s", exc)
            if result.location and 300 <= result.status < 400:
                url = result.location
                continue
            if not result.status:
                return RobotsResponse(0, b"", result.error)
            return RobotsResponse(result.status, result.body)
        return RobotsResponse(404, b"", "too many redirects")  # RFC 9309: may treat as unavailable


def status_class(status: int) -> str:
    """A response's HTTP status class ("2xx", ..., "5xx"); "error" when none came (a refused
    connection, a timeout)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "error"


def _looks_binary(result: FetchResult) -> bool:
    """A NUL byte early in a body labelled as text means the label is wrong (ingest would choke)."""
    textual = result.content_type.startswith("text/") or result.content_type in _HTML
    return textual and b"\x00" in result.body[:1024]


def _host(url: str) -> str:
    """The host name of ``url`` (what ``host_revisit`` bounds are matched on)."""
    return urlsplit(url).hostname or ""
