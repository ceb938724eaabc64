"""The daemon's crawl: the crawler (made at its first use), the passes a ``ComponentRunner``
runs and restarts with backoff, pause and resume, ``add-url``, and what status shows of it.

A pass crawls while there is work and ends when nothing is due; the next one starts at
``add-url``, the next due revisit or the end of a host's deferral, at most 30 s later.
Pausing ends the pass in hand (the crawler finishes its fetches) and none starts until resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from ..crawler.crawl import Crawler
from ..crawler.feedback import IngestFeedback
from ..crawler.settings import CrawlSettings
from ..documents import Spool
from .component_runner import Backoff, ComponentRunner

log = logging.getLogger("crystalline.supervisor")

BACKOFF = Backoff(first_s=5.0, max_s=600.0, healthy_after_s=600.0)
PAUSED_TICK_S = 1.0
IDLE_MAX_S = 30.0  # the longest wait between passes (add-url is looked at by the next pass)


class CrawlOff(ValueError):
    """The daemon was started with crawling off."""


class CrawlService:
    def __init__(
        self, settings: CrawlSettings, state_dir: Path, enabled: bool, registry_database: str = ""
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.enabled = enabled
        self.registry_database = registry_database  # ingest's registry in PostgreSQL (--database)
        self.crawler: Crawler | None = None
        self.paused = False
        self.pass_stop = asyncio.Event()  # set: the pass in hand ends
        self.runner = ComponentRunner("crawl", self._passes, BACKOFF)
        self.stopping = self.runner.stop_event  # set by stop(): no more passes, no restart
        self.task: asyncio.Task[None] | None = None

    def _crawler(self) -> Crawler:
        if self.crawler is None:
            spool = Spool(self.state_dir / "spool")
            # ingest's verdicts (new text or not) come back from its registry: traps, revisits
            registry = self.state_dir / "ingest" / "registry.sqlite3"
            feedback = IngestFeedback(registry, database=self.registry_database)
            self.crawler = Crawler(self.settings, spool, feedback=feedback)
        return self.crawler

    def start(self) -> None:
        """Start the runner once (at start with seed URLs, or at the first add-url)."""
        if self.task is None and self.enabled:
            self.task = asyncio.create_task(self.runner.run(), name="crawl")

    def pause(self) -> None:
        self.paused = True
        self.pass_stop.set()

    def resume(self) -> None:
        self.paused = False
        self.pass_stop = asyncio.Event()

    def add_url(self, url: str) -> bool:
        """Queue ``url`` (False: known already) and make sure the crawl runs; ValueError for a
        URL the crawler refuses, CrawlOff when crawling is off."""
        if not self.enabled:
            raise CrawlOff("crawling is off (--no-crawl)")
        added = self._crawler().add_url(url)
        self.start()  # a daemon started without seed URLs crawls from its first add-url
        return added

    async def _passes(self) -> None:
        """Crawl while there is work; idle (without exiting) when the frontier is empty."""
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
            summary = await crawler.run(self.pass_stop)
            self.runner.progress()
            log.info("crawl pass ended: %s", summary.line())
            if self.stopping.is_set():
                break
            # nothing to do now (or paused): wait for add-url, the next due revisit or the end of a
            # host's deferral (the next pass looks again)
            wait = min(IDLE_MAX_S, max(1.0, crawler.next_work_at() - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)

    def stats(self) -> dict[str, Any]:
        """The crawler's counts and the runner's state (``off``: crawling is off; ``paused``)."""
        out = self.crawler.stats() if self.crawler is not None else {}
        out.update(self.runner.stats())
        if not self.enabled:
            out["state"] = "off"
        elif self.paused and self.runner.state == "running":
            out["state"] = "paused"
        return out

    async def stop(self, timeout_s: float) -> None:
        """End the pass in hand and the runner (within ``timeout_s``), then close the crawler."""
        self.pass_stop.set()
        self.runner.stop()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.task, timeout_s)
        if self.crawler is not None:
            self.crawler.close()
