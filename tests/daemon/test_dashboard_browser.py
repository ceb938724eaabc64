"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real
daemon: every tab loads without console errors, the loss chart has points, 12 workers appear
and step, the chat streams text, a hostile page title renders as text, an action without the
token gets 403 and a foreign Host header is refused. Screenshots go to
``$CRYSTALLINE_TEST_ARTIFACTS`` (default: under pytest's tmp dir)."""

from __future__ import annotations

import contextlib
import http.server
import json
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _browser import artifacts_dir, browser_page, dashboard_address, open_tab, require_browser, wait_true
from _dashboard_daemon import corpus_parts, running_daemon, status
from _wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

HOSTILE_TITLE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> hostile'


WEB_TITLE = "<script>window.__pwned = 3</script> crawled"


def _hostile_page(text: str, title: str = HOSTILE_TITLE) -> str:
    paragraphs = "".join(f"<p>{line}</p>\n" for line in text.splitlines() if line.strip())
    title = title.replace("&", "&amp;")  # as a page would carry it: RCDATA in <title>
    head = f"<!doctype html><html lang=en><head><title>{title}</title></head>"
    return f"{head}<body><article>{paragraphs}</article></body></html>"


@contextlib.contextmanager
def web_site(page: str) -> Iterator[str]:
    """A loopback HTTP server with ``page`` at ``/`` (robots.txt 404: crawling allowed)."""
    body = page.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def daemon(corpus_file: Path) -> Iterator[dict[str, Any]]:
    """One daemon for this module's tests (neither changes what the other checks: the page's
    action without the token is refused, and training goes on)."""
    require_browser()
    text = corpus_file.read_text(encoding="utf-8")
    inbox = {**corpus_parts(text), "hostile.html": _hostile_page(text[:6000])}
    with (
        tempfile.TemporaryDirectory(prefix="cb-", dir="/tmp") as d,  # AF_UNIX path limit
        web_site(_hostile_page(text[6000:12000], WEB_TITLE)) as site,
        running_daemon(
            Path(d),
            inbox,
            "--http",
            "127.0.0.1:0",
            "--crawl-start-url",
            site,
            "--crawl-allow-private-addresses",
            crawl=True,
        ) as daemon,
    ):
        run = daemon["run"]
        info = dashboard_address(run)
        assert status(run)["http"]["url"] == info["url"]
        yield {**daemon, "url": info["url"], "token": info["token"]}


def test_dashboard_in_chromium(daemon: dict[str, Any], tmp_path: Path) -> None:
    url, token = daemon["url"], daemon["token"]
    artifacts = artifacts_dir(tmp_path)
    errors: list[str] = []
    with browser_page(errors) as page:
        page.goto(f"{url}#token={token}")
        assert "token" not in page.url  # taken out of the address bar

        # overview: the loss curve has points (a history point every 5 s)
        wait_true(page, "Number(document.getElementById('loss-chart').dataset.points || 0) > 0", 60)
        page.wait_for_selector("#state.running")
        page.screenshot(path=str(artifacts / "overview.png"), full_page=True)

        # node zero: 12 workers drawn, and they step while we watch
        open_tab(page, "workers")
        wait_true(page, "document.querySelectorAll('#ring .worker').length === 12")
        before = page.eval_on_selector_all("#ring .worker", "els => els.map(e => Number(e.dataset.steps))")
        wait_true(
            page,
            "[...document.querySelectorAll('#ring .worker')]"
            f".every((e, i) => Number(e.dataset.steps) > {json.dumps(before)}[i])",
        )
        states = page.eval_on_selector_all("#ring .worker", "els => els.map(e => e.dataset.state)")
        assert all(s in ("idle", "computing", "reducing", "updating") for s in states), states
        page.screenshot(path=str(artifacts / "workers.png"), full_page=True)

        # ingest: the hostile title is shown as text, nothing of it ran or became markup
        open_tab(page, "ingest")
        cell = page.wait_for_selector("#documents-table td:has-text('__pwned = 1')", timeout=60_000)
        assert cell is not None and cell.text_content() == HOSTILE_TITLE
        assert page.evaluate("window.__pwned") is None
        assert (
            page.eval_on_selector_all("#documents-table script, #documents-table img", "els => els.length")
            == 0
        )
        page.screenshot(path=str(artifacts / "ingest.png"), full_page=True)

        # crawler: the crawled page's title, from the web, shown as text too
        open_tab(page, "crawler")
        cell = page.wait_for_selector("#pages-table td:has-text('__pwned = 3')", timeout=60_000)
        assert cell is not None and cell.text_content() == WEB_TITLE
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=str(artifacts / "crawler.png"), full_page=True)
        open_tab(page, "checkpoints")
        page.wait_for_selector("#checkpoints-table tbody tr", timeout=30_000)

        # chat: the reply arrives and is kept in the page with the prompt
        open_tab(page, "chat")
        page.fill("#prompt", "<b>the cat</b>")
        page.fill("#tokens", "60")
        page.click("#send")
        wait_true(page, "(document.querySelector('.turn.reply .meta')?.textContent || '').length > 0", 60)
        reply = page.text_content(".turn.reply .text") or ""
        assert len(reply) > 0
        assert page.text_content(".turn.prompt .text") == "<b>the cat</b>"
        page.screenshot(path=str(artifacts / "chat.png"), full_page=True)

        assert errors == [], errors  # every tab drawn without a console error
        # the spiral: 256 byte tokens on the first 256 primes; token 0 (prime 2) sits at (1, 0)
        open_tab(page, "spiral")
        wait_true(page, "document.getElementById('spiral').dataset.points === '256'", 60)
        box = page.eval_on_selector(
            "#spiral",
            "c => { const r = c.getBoundingClientRect(), f = r.width / c.width;"
            " return [r.left + (spiral.half + spiral.scale) * f, r.top + spiral.half * f]; }",
        )
        page.mouse.move(box[0], box[1])
        wait_true(page, "document.getElementById('spiral-tip').textContent.startsWith('token 0:')", 10)
        page.screenshot(path=str(artifacts / "spiral.png"), full_page=True)

        # an action from the page without the token: 403, and the daemon kept training
        refused = page.evaluate(
            "fetch('/api/pause', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            ' body: \'{"what": "training"}\'}).then(r => r.status)'
        )
        assert refused == 403
        assert len(errors) == 1 and "403" in errors[0], errors  # the browser logs the refusal
    assert status(daemon["run"])["training"]["state"] != "paused"


def test_foreign_host_and_metrics(daemon: dict[str, Any]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    url = daemon["url"]
    req = urllib.request.Request(url, headers={"Host": "rebind.attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(url + "metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    assert families["crystalline_training_steps"].samples[0].value > 0
    assert families["crystalline_ingest_documents"].samples[0].value >= 1
    # --checkpoint-interval-s 5: one written by now, its age and how long it took
    wanted = {"crystalline_checkpoint_duration_seconds", "crystalline_checkpoint_age_seconds"}

    def checkpointed() -> dict[str, Any] | None:
        with urllib.request.urlopen(url + "metrics", timeout=10) as r:
            found = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        return found if wanted <= set(found) else None

    families = until(checkpointed, "no checkpoint", 60, 1.0)
    assert families["crystalline_checkpoint_duration_seconds"].samples[0].value > 0
    assert families["crystalline_checkpoint_age_seconds"].samples[0].value >= 0
    workers = {s.labels["worker"] for s in families["crystalline_worker_restarts"].samples}
    assert len(workers) == 12
