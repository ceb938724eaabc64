"""The dashboard's cluster section in a real browser (Debian's chromium driven by Playwright) on
two real daemons that form a cluster on distinct loopback addresses (tests/daemon/_cluster_net.py,
one worker each, tiny model): member 0's dashboard shows a card per member (both addresses,
ranks 0 and 1, steps that advance, an allreduce with bytes on the wire and its time, data
shares summing to 100 %) and a summary of 2 members whose params digest both daemons' status
published at one step; member 1 killed outright, the same page (not reloaded) shows the group
re-formed with one member card, without a console error; member 0 paused, its summary says it
is in no group."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _browser import artifacts_dir, browser_page, dashboard_address, require_browser, wait_true
from _cluster_net import Machines, agree, digests, machines_on_this_box
from _rendezvous_port import free_port, hosted, taken
from _wait import until

from crystalline.daemon.ring_service import ring_instance
from crystalline.daemon.status_server import request
from crystalline.shm.segments import sweep
from crystalline.workers.trainer import engine_instance

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# the cluster's deadline (the harness's 5 s elsewhere): how long the killed member is silent before
# it is dropped
TIMEOUT = ("--cluster-timeout-s", "3")
CARDS = "[...document.querySelectorAll('#cluster-members .member')]"
# a member's card once it posted its info from after an allreduce among two: bytes on the wire
ALLREDUCED = (
    r"c => /allreduce \d+\.\d ms · [\d.]+ (B|KiB|MiB)/.test(c.innerText) && !/ · 0 B/.test(c.innerText)"
)
SUMMARY = (
    "Object.fromEntries([...document.querySelectorAll('#cluster-cards .card')]"
    ".map(c => [c.children[0].textContent, c.children[1].textContent]))"
)


def _cards(page: Page) -> list[dict[str, Any]]:
    cards: list[dict[str, Any]] = page.evaluate(f"{CARDS}.map(c => ({{...c.dataset, text: c.innerText}}))")
    return cards


def _digest_step(m: Machines, digest: str) -> int | None:
    """The step at which both members' status published ``digest`` (None while one of them
    does not list it among its recent digests); a digest at two different steps fails."""
    steps = {i: [s for s, d in digests(m.status(i)).items() if d == digest] for i in (0, 1)}
    if not steps[0] or not steps[1]:
        return None
    assert steps[0] == steps[1], f"digest {digest} at steps {steps}"
    return steps[0][0]


def _two(status: dict[str, Any]) -> bool:
    return bool((status.get("cluster") or {}).get("world") == 2)


def _start_two(m: Machines, rendezvous: int) -> dict[str, Any]:
    """Both members on ``rendezvous``; member 0's status once the two train or it says the port
    was taken."""
    m.start(0, rendezvous, ("--workers", "1", "--http", "127.0.0.1:0", *TIMEOUT))
    m.start(1, rendezvous, ("--workers", "1", *TIMEOUT))
    return m.wait(0, lambda s: _two(s) or taken(s), "two members training", 300)


def _stop_two(m: Machines) -> None:
    for i in (0, 1):
        m.stop(i)
        shutil.rmtree(m.root / f"m{i}")


def test_two_members_then_one_after_a_kill(tmp_path: Path) -> None:
    require_browser()
    errors: list[str] = []
    with machines_on_this_box(2, loopback=True) as m, browser_page(errors) as page:
        assert m.kind == "loopback", m.kind
        hosted(lambda port: _start_two(m, port), lambda: _stop_two(m), lambda: free_port(m.addresses[0]))
        m.wait(1, _two, "two members training", 300)
        page.goto(dashboard_address(m.root / "m0" / "run")["url"])

        # a card per member, each posted after an allreduce among the two
        wait_true(page, f"{CARDS}.length === 2 && {CARDS}.every({ALLREDUCED})", 120)
        cards = _cards(page)
        assert sorted(c["address"] for c in cards) == sorted(m.addresses), cards
        assert sorted(c["rank"] for c in cards) == ["0", "1"], cards
        assert all(c["state"] == "training" for c in cards), cards
        own = [c for c in cards if c["address"] == m.addresses[0]]
        assert len(own) == 1 and f"{m.addresses[0]} (this member)" in own[0]["text"], cards
        for c in cards:
            assert re.search(r"allreduce \d+\.\d ms · [\d.]+ (B|KiB|MiB)", c["text"]), c
        shares = [int(re.findall(r"data share (\d+) %", c["text"])[0]) for c in cards]
        assert 98 <= sum(shares) <= 102 and min(shares) > 0, cards
        # both members' steps advance on the page
        before = {c["address"]: int(c["step"]) for c in cards}
        moved = f"c => Number(c.dataset.step) > ({json.dumps(before)})[c.dataset.address]"
        wait_true(page, f"{CARDS}.length === 2 && {CARDS}.every({moved})", 60)
        summary = page.evaluate(SUMMARY)
        assert summary["cluster"] == "training", summary
        assert summary["rank"] == f"{own[0]['rank']} of 2", summary
        assert re.fullmatch(r"[\d.]+ (B|KiB|MiB)", summary["allreduce payload"]), summary

        # the page's params digest is what both daemons' status published at one step
        seen: dict[str, Any] = {}

        def digest_on_page_and_in_status() -> tuple[int] | None:  # a tuple: step 0 is a step
            seen["digest"] = page.evaluate(SUMMARY)["params digest"]
            step = _digest_step(m, seen["digest"])
            return None if step is None else (step,)

        (step,) = until(digest_on_page_and_in_status, lambda: f"the page's digest in both: {seen}", 60)
        assert re.fullmatch(r"[0-9a-f]+", seen["digest"]), seen
        assert agree(m, [0, 1]) >= step  # and equal at every step both still list
        page.locator("#cluster").screenshot(path=str(artifacts_dir(tmp_path) / "cluster-two.png"))

        # member 1's daemon dies: the group re-forms without it; the page follows, not reloaded
        two = page.evaluate(SUMMARY)
        page.evaluate("window.notReloaded = true")
        m.kill(1)
        killed = time.monotonic()
        # its shared memory goes with a dead machine (here: what its next start would sweep)
        checkpoints = m.root / "m1" / "state" / "checkpoints"
        for instance in (engine_instance(checkpoints), ring_instance(checkpoints)):
            sweep(instance)
        alone = f"{CARDS}.length === 1 && {CARDS}[0].dataset.address === {m.addresses[0]!r}"
        # dropped once silent for --cluster-timeout-s (3 s); the issue asks for a step within 60 s
        wait_true(page, f"{alone} && {CARDS}[0].dataset.rank === '0'", 60)
        print(f"one member card {time.monotonic() - killed:.1f} s after the kill ({m.kind})")
        first = int(page.evaluate(f"{CARDS}[0].dataset.step"))
        wait_true(page, f"{alone} && Number({CARDS}[0].dataset.step) > {first}", 60)
        assert page.evaluate("window.notReloaded === true")
        summary = page.evaluate(SUMMARY)
        assert summary["cluster"] == "training" and summary["rank"] == "0 of 1", summary
        assert int(summary["generation"]) > int(two["generation"]), (two, summary)
        assert int(summary["re-formed"]) > int(two["re-formed"]), (two, summary)
        page.locator("#cluster").screenshot(path=str(artifacts_dir(tmp_path) / "cluster-one.png"))

        # paused, member 0 leaves its group: the summary says it is in none (status's rank is
        # null then), not a rank such as "-1 of 1"
        assert request(m.root / "m0" / "run" / "crystalline.sock", {"cmd": "pause"}, 10.0)["ok"]
        wait_true(page, f"({SUMMARY})['rank'] === 'not in a group'", 60)
        summary = page.evaluate(SUMMARY)
        assert "left the cluster by request" in summary["cluster"], summary
    assert errors == [], errors
