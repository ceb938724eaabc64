"""The README's dashboard screenshots, from the real dashboard: a real ``crystalline run`` on a
text corpus (12 workers, a small model, no crawl), trained for ``--train-s`` seconds, its page
opened in Debian's chromium through Playwright (``executable_path``: no browser download), the
overview, node zero and chat tabs saved as PNG. The cluster's screenshot is the browser cluster
test's ``cluster-two.png`` (tests/daemon/test_dashboard_browser_cluster.py).

    .venv/bin/python scripts/dashboard_screenshots.py [--corpus ../shared/data/tinyshakespeare.txt]
        [--out docs] [--train-s 120]

Writes ``dashboard-overview.png``, ``dashboard-workers.png`` and ``dashboard-chat.png`` in
``--out`` (each through a temporary file, renamed into place); exits 2 with one line when the
corpus, chromium or playwright is missing, 1 when the daemon does not come up or a tab does not
show what it should within its deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from playwright.sync_api import Page

START_S = 120.0  # the daemon's dashboard, and its first step
TAB_S = 60.0  # a tab showing what it should
MODEL = ("--embed-dim", "64", "--num-layers", "2", "--num-heads", "4", "--seq-len", "64")


def wait(probe: Callable[[], object], what: str, timeout_s: float) -> None:
    """Until ``probe()`` is true; SystemExit(1) naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"dashboard_screenshots: {what} not within {timeout_s:.0f} s")
        time.sleep(0.25)


def save(page: Page, out: Path, name: str) -> None:
    """A full-page PNG of ``page`` at ``out/name``, written to a temporary file and renamed."""
    tmp = out / f".{name}.tmp.png"
    page.screenshot(path=str(tmp), full_page=True)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(out / name)
    print(f"{out / name}: {(out / name).stat().st_size} bytes")


def shoot(url: str, out: Path, train_s: float, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            time.sleep(train_s)  # the curves: training for this long, not a wait for anything
            points = "Number(document.getElementById('loss-chart').dataset.points || 0) > 2"
            wait(lambda: page.evaluate(points), "loss points on the overview", TAB_S)
            save(page, out, "dashboard-overview.png")
            page.click("#tabs button[data-tab=workers]")
            workers = "document.querySelectorAll('#ring .worker').length === 12"
            wait(lambda: page.evaluate(workers), "12 workers drawn", TAB_S)
            save(page, out, "dashboard-workers.png")
            page.click("#tabs button[data-tab=chat]")
            page.fill("#prompt", "ROMEO:")
            page.fill("#tokens", "200")
            page.click("#send")
            replied = "(document.querySelector('.turn.reply .meta')?.textContent || '').length > 0"
            wait(lambda: page.evaluate(replied), "the chat's reply", TAB_S)
            save(page, out, "dashboard-chat.png")
        finally:
            browser.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM; what is left of its process group after 60 s gets SIGKILL."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.25)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def missing(what: str) -> NoReturn:
    """Exit 2 with one line: what this script needs is not here."""
    print(f"dashboard_screenshots: {what}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("../shared/data/tinyshakespeare.txt"))
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--train-s", type=float, default=120.0)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing("the playwright package is not installed (pip install -e .[dev])")
    if chromium is None:
        missing("chromium is not installed (scripts/bootstrap.sh installs it as root)")
    if not args.corpus.is_file():
        missing(f"no corpus at {args.corpus}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shots-", dir="/tmp") as d:  # AF_UNIX path limit
        state, run = Path(d) / "s", Path(d) / "r"
        (state / "inbox").mkdir(parents=True)
        shutil.copy(args.corpus, state / "inbox" / args.corpus.name)
        cmd = [
            sys.executable, "-m", "crystalline.daemon.cli", "run", "--state-dir", str(state),
            "--runtime-dir", str(run), "--no-crawl", "--no-samples", "--http", "127.0.0.1:0",
            "--workers", "12", *MODEL, "--batch-size", "12", "--eval-interval", "250", "--eval-windows", "32",
        ]  # fmt: skip
        log = Path(d) / "daemon.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            info = run / "dashboard.json"
            wait(lambda: info.exists() or proc.poll() is not None, "the dashboard", START_S)
            if proc.poll() is not None:
                raise SystemExit(f"dashboard_screenshots: the daemon exited: {log.read_text()[-2000:]}")
            dashboard = json.loads(info.read_text(encoding="utf-8"))
            shoot(f"{dashboard['url']}#token={dashboard['token']}", args.out, args.train_s, chromium)
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
