"""What the dashboard's browser tests share: Debian's chromium driven by Playwright (through
``executable_path``: no browser download), the dashboard's URL and token from a running daemon,
polling with a deadline, and where screenshots go (``$CRYSTALLINE_TEST_ARTIFACTS``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _wait import until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]


def require_browser() -> None:
    """Skip, saying why, when chromium or playwright is missing."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh installs it when run as root)")
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install -e .[dev])")


def dashboard_address(run: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """The ``dashboard.json`` a running daemon writes in its runtime dir: url and token."""
    path = run / "dashboard.json"
    until(path.exists, f"no {path}", timeout_s)
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return info


@contextmanager
def browser_page(errors: list[str]) -> Iterator[Page]:
    """A chromium page (1280x900) whose console errors and uncaught exceptions go to ``errors``."""
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
        finally:
            browser.close()


def artifacts_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("CRYSTALLINE_TEST_ARTIFACTS", "") or tmp_path / "artifacts") / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_true(page: Page, expression: str, timeout_s: float = 30.0) -> None:
    """Poll ``expression`` from here: Playwright's wait_for_function polls with eval() inside the
    page, which the dashboard's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    until(
        lambda: page.evaluate(expression),
        f"not true: {expression}",
        timeout_s,
        0.25,
        pause=lambda seconds: page.wait_for_timeout(1000 * seconds),  # Playwright's: events go on
    )


def open_tab(page: Page, name: str) -> None:
    page.click(f"#tabs button[data-tab={name}]")
    page.wait_for_selector(f"#tab-{name}.active")
