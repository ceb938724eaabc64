"""`/metrics` of a real daemon that crawled a small local site and ingested a drop folder with
bad files, parsed with prometheus-client's parser: requests by HTTP status class, documents
failed by kind of reason."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import wait_daemon
from _dashboard_daemon import running_daemon
from _local_site import prose, start_site
from aiohttp import web
from conftest import make_corpus
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


class Site:
    """/ links to two pages and a missing one (404), in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        ready = threading.Event()

        def serve() -> None:
            async def index(_r: web.Request) -> web.Response:
                links = '<a href="/a">a</a> <a href="/b">b</a> <a href="/missing">gone</a>'
                return web.Response(
                    text=f"<html><body><p>{prose(1)}</p>{links}</body></html>", content_type="text/html"
                )

            async def page(r: web.Request) -> web.Response:
                body = f"<html><body><p>{prose(len(r.path) + ord(r.path[-1]))}</p></body></html>"
                return web.Response(text=body, content_type="text/html")

            asyncio.set_event_loop(self.loop)
            routes = [web.get("/", index), web.get("/a", page), web.get("/b", page)]
            self.runner, self.url = self.loop.run_until_complete(start_site(routes))
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def samples(metrics: str, family: str, label: str) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    return {s.labels[label]: s.value for s in families[family].samples if s.name.endswith("_total")}


def test_metrics_count_requests_by_status_class_and_failures_by_reason(tmp_path: Path) -> None:
    site = Site()
    inbox = {f"doc-{i}.txt": make_corpus(20_000, seed=i) for i in range(3)}
    inbox["binary.txt"] = "\x00\x01\x02 not text " * 50
    inbox["blank.txt"] = ""
    args = ("--crawl-start-url", site.url + "/", "--crawl-allow-private-addresses", "--crawl-min-delay", "0",
            "--crawl-no-sitemaps", "--http", "127.0.0.1:0")  # fmt: skip
    try:
        with running_daemon(tmp_path, inbox, *args, crawl=True) as daemon:
            run = daemon["run"]

            def done(data: dict[str, Any]) -> bool:
                by_status = data["crawler"].get("by_status", {})
                return bool(
                    by_status.get("2xx", 0) >= 3
                    and by_status.get("4xx", 0) >= 2
                    and data["ingest"]["failed"] >= 2
                )

            data = wait_daemon(
                run, None, done, "crawl or ingest not done", 120, 0.5,
                lambda d: f"{d.get('crawler')} {d.get('ingest')}",
            )  # fmt: skip
            url = json.loads((run / "dashboard.json").read_text(encoding="utf-8"))["url"]
            with urllib.request.urlopen(url + "metrics", timeout=30) as r:
                metrics = r.read().decode()
    finally:
        site.close()
    assert data["ingest"]["failed_by_reason"] == {"binary data, not text": 1, "empty file": 1}
    pages = samples(metrics, "crystalline_crawler_pages", "class")
    assert pages["2xx"] >= 3  # /, /a, /b
    assert pages["4xx"] >= 2  # robots.txt and /missing
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert sum(pages.values()) == families["crystalline_crawler_pages_fetched"].samples[0].value
    failed = samples(metrics, "crystalline_ingest_failed", "reason")
    assert failed == {"binary data, not text": 1.0, "empty file": 1.0}
