"""The daemon's crawl: the crawler in a thread of its own with its own event loop, the passes a
``ComponentRunner`` runs there and restarts with backoff, pause and resume, ``add-url``, and what
status shows of it.

A pass crawls while there is work and ends when nothing is due; the next one starts at
``add-url`` (at once), the next due revisit or the end of a host's deferral, at most 30 s later,
or at once when status's reads find the database away (that pass retries it at the crawl's
backoff, 0.5 s doubling to 30 s, so the crawl's state follows the database back within a retry
rather than at the next idle pass).
Pausing ends the pass in hand (the crawler finishes its fetches) and none starts until resume.

Why a thread: every frontier call is a blocking database statement (the SQLite file, or with
``--database`` PostgreSQL, whose calls wait up to their deadlines while it is away: 2 s for a
connection, ``[crawl] database-timeout-s`` + 2 s (17 s by default) for a statement on a cut
network). On the supervisor's loop those waits would
stall the status socket, the drop folder and the watchdog; on the crawl's own loop they stall
the crawl alone. One thread makes every frontier call, in the order the crawl makes them, which
is what the frontier's transactions and the outcomes it keeps through an outage rely on. The
supervisor reads a snapshot of the crawler's counts that the crawl thread takes every
``STATS_EVERY_S`` (the crawler reads its frontier's tables for it at most every 5 s, and not
while the database is known away: ``Crawler.stats``); add-url, pause, resume and stop cross to
the crawl loop thread-safely, add-url with a deadline.

Nothing runs before the supervisor's ``start()`` (its state directory and database are ready):
an add-url before it is refused (``CrawlBusy``), so that no crawler touches a state directory
not checked yet nor earns a backoff on a database the daemon is still waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..crawler.crawl import Crawler
from ..crawler.feedback import IngestFeedback
from ..crawler.settings import CrawlSettings
from ..documents import Spool
from ..postgres import Database, DatabaseUnavailable
from .component_runner import Backoff, ComponentRunner

log = logging.getLogger("crystalline.supervisor")

BACKOFF = Backoff(first_s=5.0, max_s=600.0, healthy_after_s=600.0)
PAUSED_TICK_S = 1.0
IDLE_MAX_S = 30.0  # the longest wait between passes (add-url is looked at by the next pass)
STATS_EVERY_S = 0.5  # how often the crawl thread takes the snapshot status reads
THREAD_START_S = 5.0  # the crawl thread's loop runs within this (a thread starts in milliseconds)
EXECUTOR_PREFIX = "crystalline-crawl-thread"  # the crawl loop's executor threads (a parse, a WARC append)
# add-url waits this long for the crawl thread (less than a status client's 10 s): a frontier
# call in hand may wait out a database deadline
ADD_URL_TIMEOUT_S = 8.0
JOIN_SLICE_S = 0.25  # stop() joins the crawl thread this long at a time


class CrawlOff(ValueError):
    """The daemon was started with crawling off."""


class CrawlBusy(ValueError):
    """The crawler could not take a URL now (its database is away, or it did not answer in time)."""


class CrawlService:
    def __init__(
        self, settings: CrawlSettings, state_dir: Path, enabled: bool, registry_database: str = ""
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.enabled = enabled
        self.registry_database = registry_database  # ingest's registry in PostgreSQL (--database)
        self.crawler: Crawler | None = None  # made and used in the crawl thread only
        self.paused = False
        self.started = False  # set by start(): the daemon's state dir and database are ready
        self.runner = ComponentRunner("crawl", self._passes, BACKOFF)
        self.stopping = self.runner.stop_event  # set by stop(): no more passes, no restart
        self.thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the crawl thread's
        self._executor: ThreadPoolExecutor | None = None  # the crawl loop's default executor
        self._loop_ready = threading.Event()
        self._pass_stop: asyncio.Event | None = None  # set: the pass in hand ends (crawl loop)
        self._wake: asyncio.Event | None = None  # set: an idle wait ends (add-url, stop; crawl loop)
        self._snapshot: dict[str, Any] = {}  # the crawler's stats, taken by the crawl thread
        self.stop_error: str | None = None  # the crawl thread outlived stop()'s wait (status, health)

    def _crawler(self) -> Crawler:
        if self.crawler is None:
            spool = Spool(self.state_dir / "spool")
            # ingest's verdicts (new text or not) come back from its registry: traps, revisits
            registry = self.state_dir / "ingest" / "registry.sqlite3"
            # read on the crawl's loop: within the crawl's deadline ([crawl] database-timeout-s)
            feedback = IngestFeedback(registry, self.registry_database, self.settings.database_timeout_s)
            self.crawler = Crawler(self.settings, spool, feedback=feedback)
        return self.crawler

    def check_database(self) -> None:
        """At start, beside ingest's registry (the supervisor's ``_prepare``, one wait for both):
        the crawl's PostgreSQL database (``[crawl] database``) answers a connection, or
        DatabaseUnavailable says why. Nothing to check with crawling off or a SQLite frontier."""
        if self.enabled and self.settings.database:
            Database(
                self.settings.database,
                "frontier",
                max_size=1,
                name="crystalline-frontier",
                statement_timeout_s=self.settings.database_timeout_s,
            ).close()

    def start(self) -> None:
        """The daemon has started (its state directory and database are ready): take add-url
        from now on, and crawl at once when there are start URLs."""
        self.started = True
        if self.settings.start_url:
            self._start_thread()

    def _start_thread(self) -> None:
        """Start the crawl thread and its runner once (at start with start URLs, or at the first
        add-url after it)."""
        if self.thread is None and self.enabled:
            thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="crawl", daemon=True)
            self.thread = thread
            thread.start()
            if not self._loop_ready.wait(THREAD_START_S):
                raise RuntimeError(f"the crawl thread did not start within {THREAD_START_S:.0f} s")

    async def _main(self) -> None:
        """The crawl thread: the runner's passes, the snapshots, and the crawler closed at the end."""
        self._loop = asyncio.get_running_loop()
        # its own, so that a crawl given up on can have it shut down (give_up_threads);
        # asyncio.run shuts it down at a normal end, as it would its own
        self._executor = ThreadPoolExecutor(thread_name_prefix=EXECUTOR_PREFIX)
        self._loop.set_default_executor(self._executor)
        self._pass_stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_ready.set()
        snapshots = asyncio.create_task(self._snapshots())
        try:
            await self.runner.run()
        finally:
            snapshots.cancel()
            if self.crawler is not None:
                self.crawler.close()
                self._snapshot = self.crawler.stats()  # the final counts (close keeps them)

    async def _snapshots(self) -> None:
        while True:
            self._take_snapshot()
            await asyncio.sleep(STATS_EVERY_S)

    def _take_snapshot(self) -> None:
        if self.crawler is not None:
            try:
                self._snapshot = self.crawler.stats()
            except (DatabaseUnavailable, sqlite3.Error, OSError) as exc:  # the last one stays
                log.debug("crawl stats not read: %s", exc)
            if self.crawler.database_away() and self._wake is not None:
                # an idle crawl starts its next pass now: the pass retries the database at the
                # crawl's backoff, so its state follows the database back (not a full idle wait)
                self._wake.set()

    def give_up_threads(self) -> None:
        """The stop has given the crawl up (its thread outlived the stop's wait, and its loop
        runs on with the process): its loop's executor is shut down without waiting (thread-safe,
        called from the supervisor's loop), so that its idle threads end at once, as those of an
        executor shut down do, and only a busy one (a WARC append or spool put on a hung disk)
        and the work already queued (a page's WARC append, kept: not cancelled) are what the
        exit waits for (``Supervisor._wait_for_threads``). The given-up loop's next ``to_thread``
        then raises RuntimeError ("cannot schedule new futures after shutdown") in that crawl,
        which the process is about to exit without."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _in_crawl_loop(self, fn: Any) -> None:
        """Run ``fn`` on the crawl loop (at once when the thread has not started)."""
        if self._loop is None:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # the crawl loop has ended already
                self._loop.call_soon_threadsafe(fn)

    def _end_pass(self) -> None:
        if self._pass_stop is not None:
            self._pass_stop.set()

    def pause(self) -> None:
        self.paused = True
        self._in_crawl_loop(self._end_pass)

    def resume(self) -> None:
        self.paused = False  # the next pass takes a new stop event (see _passes)

    async def add_url(self, url: str) -> bool:
        """Queue ``url`` (False: known already) and make sure the crawl runs; ValueError for a
        URL the crawler refuses, CrawlOff when crawling is off, CrawlBusy when the crawler cannot
        take it now."""
        if not self.enabled:
            raise CrawlOff("crawling is off (--no-crawl)")
        if not self.started:  # the crawler would touch a state dir or database not ready yet
            raise CrawlBusy(
                "the daemon is starting: it takes URLs once its state directory and database are"
                " ready (status: state running); try again"
            )
        self._start_thread()  # a daemon started without start URLs crawls from its first add-url
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._add_url(url), self._loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), ADD_URL_TIMEOUT_S)
        except TimeoutError:
            raise CrawlBusy(
                f"the crawler did not answer within {ADD_URL_TIMEOUT_S:.0f} s (is its database away?):"
                " try again"
            ) from None
        except DatabaseUnavailable as exc:
            raise CrawlBusy(f"cannot queue {url} now: {exc}") from None

    async def _add_url(self, url: str) -> bool:
        added = self._crawler().add_url(url)
        self._take_snapshot()
        if self._wake is not None:
            self._wake.set()  # an idle crawl starts its next pass now
        return added

    async def _passes(self) -> None:
        """Crawl while there is work; idle (without exiting) when the frontier is empty (in the
        crawl thread)."""
        crawler = self._crawler()
        for url in self.settings.start_url:
            try:
                crawler.add_url(url)
            except ValueError as exc:
                log.error("seed URL refused: %s", exc)
        while not self.stopping.is_set():
            if self.paused:
                await asyncio.sleep(PAUSED_TICK_S)
                continue
            if self._pass_stop is None or self._pass_stop.is_set():  # ended by a pause: a new pass
                self._pass_stop = asyncio.Event()
            wake = self._wake = asyncio.Event()
            summary = await crawler.run(self._pass_stop)
            self.runner.progress()
            log.info("crawl pass ended: %s", summary.line())
            if self.stopping.is_set():
                break
            # nothing to do now (or paused): wait for add-url, the next due revisit or the end of a
            # host's deferral (the next pass looks again), or stop
            wait = min(IDLE_MAX_S, max(1.0, crawler.next_work_at() - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    def stats(self) -> dict[str, Any]:
        """The crawler's counts (the crawl thread's last snapshot) and the runner's state
        (``off``: crawling is off; ``paused``)."""
        out = dict(self._snapshot)
        out.update(self.runner.stats())
        if self.stop_error:
            out["error"] = self.stop_error
        if not self.enabled:
            out["state"] = "off"
        elif self.paused and self.runner.state == "running":
            out["state"] = "paused"
        return out

    def _stop_in_loop(self) -> None:
        self._end_pass()
        self.runner.stop()
        if self._wake is not None:
            self._wake.set()

    async def stop(self, timeout_s: float) -> None:
        """End the pass in hand and the runner, and close the crawler (in the crawl thread),
        waiting at most ``timeout_s``. A crawl thread still running then (a fetch longer than
        the crawl's ``stop_grace``, a frontier call waiting out a database deadline) is left: a
        warning, and ``error`` in status and health from then on; the daemon goes on stopping
        and exits without it, its loop's busy executor threads waited for until EXIT_S at most
        (``give_up_threads``, ``Supervisor._wait_for_threads``; its hosts' leases run out)."""
        self._in_crawl_loop(self._stop_in_loop)
        if self.thread is not None:
            # joined in slices: a stop cut short (cancelled) leaves no join running in the loop's
            # executor, which the supervisor's exit would wait for
            deadline = time.monotonic() + timeout_s
            while self.thread.is_alive() and (left := deadline - time.monotonic()) > 0:
                await asyncio.to_thread(self.thread.join, min(JOIN_SLICE_S, left))
            if self.thread.is_alive():
                self.stop_error = f"did not stop within {timeout_s:g} s: left to end with the process"
                log.warning("the crawl %s (its hosts' leases run out)", self.stop_error)
