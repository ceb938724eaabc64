"""The daemon revisits on its own (issue 12): a real `crystalline run` crawls a local site, comes
back to its pages with conditional requests, ingests a changed page as a new version, and shows
the per-host table in status."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import wait_daemon
from _dashboard_daemon import running_daemon
from _local_site import prose, start_site
from aiohttp import web


class Site:
    """Pages /p/0 .. /p/4 with ETags, in a thread of its own; ``version`` changes a page."""

    def __init__(self) -> None:
        self.version = dict.fromkeys(range(5), 0)
        self.not_modified = 0
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(30)

    def _serve(self) -> None:
        async def page(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            tag = f'"{i}-{self.version[i]}"'
            if request.headers.get("If-None-Match") == tag:
                self.not_modified += 1
                return web.Response(status=304, headers={"ETag": tag})
            links = "".join(f'<a href="/p/{j}">{j}</a>' for j in range(5))
            text = f"<html><body><p>{prose(i * 100 + self.version[i])}</p>{links}</body></html>"
            return web.Response(text=text, content_type="text/html", headers={"ETag": tag})

        asyncio.set_event_loop(self.loop)
        self.runner, self.url = self.loop.run_until_complete(start_site([web.get("/p/{i}", page)]))
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def wait_for(run: Path, what: str, test: Any, timeout_s: float = 120.0) -> dict[str, Any]:
    return wait_daemon(
        run, None, test, f"no {what}", timeout_s, 0.5, lambda d: f"{d.get('crawler')} {d.get('ingest')}"
    )


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_the_daemon_revisits_and_ingests_a_changed_page_as_a_new_version(tmp_path: Path) -> None:
    site = Site()
    try:
        args = ("--crawl-start-url", site.url + "/p/0", "--crawl-allow-private-addresses",
                "--crawl-min-delay", "0", "--crawl-min-revisit", "3", "--crawl-no-sitemaps")  # fmt: skip
        with running_daemon(tmp_path, {"seed.txt": prose(999)}, *args, crawl=True) as daemon:
            run = daemon["run"]
            # the per-host table in status is refreshed at most every 5 s: wait for it too
            first = wait_for(
                run,
                "5 pages ingested and listed",
                lambda d: (
                    d["ingest"].get("documents", 0) >= 6
                    and sum(h["stored"] for h in d["crawler"].get("hosts", [])) >= 5
                ),
            )
            [host] = first["crawler"]["hosts"]
            assert (host["host"], host["stored"]) == (site.url, 5)
            wait_for(run, "a revisit pass of 304s", lambda d: d["crawler"]["revisits"]["not_modified"] >= 5)
            site.version[2] += 1
            changed = wait_for(run, "the changed page", lambda d: d["crawler"]["revisits"]["changed"] >= 1)
            wait_for(run, "its new version ingested", lambda d: d["ingest"].get("documents", 0) >= 7)
        assert site.not_modified >= 5
        assert changed["crawler"]["stored_total"] == 5  # a new version is no new page
    finally:
        site.close()
