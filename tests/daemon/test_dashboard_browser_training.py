"""The dashboard's training views in a real browser (Debian's chromium driven by Playwright)
against a real daemon: a one-member cluster on loopback shows its member card (address, rank 0,
a step that advances, the last allreduce, the state) and a daemon without ``--cluster`` shows
none; two drop sub-folders give the loss chart one validation line per source, named in the
legend as text, a source named with markup included (no element made of it, no dialog)."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from _browser import artifacts_dir, browser_page, dashboard_address, require_browser, wait_true
from _dashboard_daemon import corpus_parts, running_daemon, trained
from _rendezvous_port import free_port, hosted, taken

from crystalline.tokens.held_out import held_out

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

HOSTILE_SOURCE = "<img src=x onerror=alert(1)> a&b<i>"
VAL_FRACTION = 0.3
MEMBER = "document.querySelector('#cluster-members .member')"


def _source_inbox(inbox: Path, folders: list[str], text: str) -> dict[str, str]:
    """``text`` cut into documents spread over ``folders``, each folder with two documents held
    out for validation (by the hash of their path, as ingest chooses) and the rest to train."""
    parts = list(corpus_parts(text, 8 * len(folders)).values())
    out: dict[str, str] = {}
    for k, folder in enumerate(folders):
        names = [f"doc-{i}.txt" for i in range(200)]
        held = [n for n in names if held_out(str(inbox / folder / n), VAL_FRACTION)][:2]
        trained = [n for n in names if not held_out(str(inbox / folder / n), VAL_FRACTION)][:6]
        for name, part in zip(held + trained, parts[8 * k : 8 * (k + 1)], strict=True):
            out[f"{folder}/{name}"] = part
    return out


def test_cluster_member_card(corpus_file: Path, tmp_path: Path) -> None:
    require_browser()
    text = corpus_file.read_text(encoding="utf-8")
    errors: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="cc-", dir="/tmp") as d,  # AF_UNIX path limit
        contextlib.ExitStack() as attempt,
        browser_page(errors) as page,
    ):
        started: list[dict[str, Any]] = []

        def trained_or_port_taken(status: dict[str, Any]) -> bool:
            return trained(status) or taken(status)

        def start(port: int) -> dict[str, Any]:
            cluster = ("--cluster", f"127.0.0.1:{port}", "--cluster-nodes", "1:3")
            settings = ("--http", "127.0.0.1:0", "--workers", "2", *cluster, "--cluster-address", "127.0.0.1")
            parts = corpus_parts(text)
            daemon = running_daemon(Path(d) / str(port), parts, *settings, ready=trained_or_port_taken)
            started.append(attempt.enter_context(daemon))
            return started[-1]["status"]

        # attempt.close(): stop the one whose port was taken
        hosted(start, attempt.close, lambda: free_port("127.0.0.1"))
        daemon = started[-1]
        info = dashboard_address(daemon["run"])
        page.goto(info["url"])
        # one member; its info in the rendezvous store is from after the group formed (rank 0),
        # and then from after a step of its own (the step moved: an allreduce was measured)
        wait_true(page, "document.querySelectorAll('#cluster-members .member').length === 1", 60)
        wait_true(page, f"{MEMBER}.dataset.rank === '0'", 60)
        first = int(page.evaluate(f"{MEMBER}.dataset.step"))
        wait_true(page, f"Number({MEMBER}.dataset.step) > {first}", 60)
        assert page.evaluate("document.getElementById('cluster').hidden") is False
        card: dict[str, Any] = page.evaluate(f"({{...{MEMBER}.dataset, text: {MEMBER}.innerText}})")
        assert card["address"] == "127.0.0.1" and card["rank"] == "0", card
        assert card["state"] == "training", card
        assert "127.0.0.1 (this member)" in card["text"], card
        # the last allreduce: its time and its bytes on the wire (none with one member)
        assert re.search(r"allreduce \d+\.\d ms · 0 B", card["text"]), card
        assert "data share 100 %" in card["text"], card
        summary = page.eval_on_selector_all(
            "#cluster-cards .card",
            "cs => Object.fromEntries(cs.map(c => [c.children[0].textContent, c.children[1].textContent]))",
        )
        assert summary["cluster"] == "training" and summary["rank"] == "0 of 1", summary
        assert int(summary["generation"]) >= 1, summary
        assert re.fullmatch(r"[\d.]+ (B|KiB|MiB)", summary["allreduce payload"]), summary
        assert re.fullmatch(r"[0-9a-f]+", summary["params digest"]), summary
        page.screenshot(path=str(artifacts_dir(tmp_path) / "cluster.png"), full_page=True)
    assert errors == [], errors


def test_validation_line_per_source(corpus_file: Path, tmp_path: Path) -> None:
    require_browser()
    text = corpus_file.read_text(encoding="utf-8")
    errors: list[str] = []
    dialogs: list[str] = []
    evaluate = ["--eval-interval", "5", "--eval-windows", "8", "--source-eval-windows", "4"]
    with tempfile.TemporaryDirectory(prefix="cv-", dir="/tmp") as d:  # AF_UNIX path limit
        inbox = _source_inbox(Path(d) / "s" / "inbox", ["plays", HOSTILE_SOURCE], text)
        settings = ("--http", "127.0.0.1:0", "--workers", "2", "--val-fraction", str(VAL_FRACTION), *evaluate)
        with running_daemon(Path(d), inbox, *settings) as daemon, browser_page(errors) as page:
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(dashboard_address(daemon["run"])["url"])
            lines = ["val: plays", f"val: {HOSTILE_SOURCE}"]
            # a line per source once an evaluation scored both and a history point (5 s) took it
            wait_true(
                page,
                "(names => names.every(n => [...document.querySelectorAll('#loss-chart-legend .series')]"
                ".some(e => e.dataset.name === n && Number(e.dataset.points) > 0)))"
                f"({json.dumps(lines)})",
                120,
            )
            legend = page.eval_on_selector_all(
                "#loss-chart-legend .series", "es => es.map(e => e.querySelector('.name').textContent)"
            )
            assert legend[:2] == ["loss", "validation"] and sorted(legend[2:]) == sorted(lines), legend
            # the markup in the source's name is text: no element was made of it, nothing ran
            assert page.evaluate("document.querySelectorAll('img, #loss-chart-legend i').length") == 0
            assert dialogs == []
            # without --cluster there is no cluster section
            assert page.evaluate("document.getElementById('cluster').hidden") is True
            cards = "document.querySelectorAll('#cluster-cards .card, #cluster-members .card').length"
            assert page.evaluate(cards) == 0
            page.screenshot(path=str(artifacts_dir(tmp_path) / "sources.png"), full_page=True)
    assert errors == [], errors
