"""The frontier: dedup, claiming, outcomes, recovery after a crash, the pattern budget, the caps;
each test taking ``open_frontier`` runs on SQLite and on PostgreSQL, and host leases on the latter."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _wait import until

from crystalline.crawler.frontier import (
    DROP_FRONTIER_FULL,
    DROP_HOST_FULL,
    DROP_HOST_PAGES,
    DROP_LISTED,
    DROP_PAGE_LINKS,
    DROP_ROBOTS,
    DROP_TRAP,
    FAILED,
    IN_FLIGHT,
    QUEUED,
    STORED,
    TRAP_WINDOW,
    Frontier,
    NewUrl,
    Revisit,
)
from crystalline.crawler.frontier_pg import PgFrontier

Opener = Callable[..., Frontier]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_frontier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's frontier (again, for a reopen) with the caps given: one SQLite file, or
    one PostgreSQL database of the session's cluster."""
    opened: list[Frontier] = []
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None

    def opener(**caps: Any) -> Frontier:
        frontier = PgFrontier(url, **caps) if url else Frontier(tmp_path / "f.sqlite", **caps)
        opened.append(frontier)
        return frontier

    yield opener
    for frontier in opened:
        frontier.close()


def _urls(n: int, origin: str = "http://h") -> list[NewUrl]:
    return [NewUrl(f"{origin}/p/{i}", origin, 1) for i in range(n)]


def test_each_url_is_queued_once(open_frontier: Opener) -> None:
    frontier = open_frontier()
    assert frontier.add(_urls(5)) == 5
    assert frontier.add(_urls(7)) == 2
    assert frontier.counts[QUEUED] == 7 and frontier.hosts == 1


def test_claim_finish_and_retry(open_frontier: Opener) -> None:
    frontier = open_frontier()
    frontier.add(_urls(3))
    now = time.time()
    first, second = frontier.claim("http://h", 2, now)
    assert (first.url, second.url) == ("http://h/p/0", "http://h/p/1")
    assert frontier.finish(first, STORED, 200, links=[NewUrl("http://h/new", "http://h", 2)]) == 1
    frontier.retry(second, now + 60, 503, "HTTP 503")
    third, fourth = frontier.claim("http://h", 5, now)  # p/1 waits for its retry time
    assert (third.url, fourth.url) == ("http://h/p/2", "http://h/new")
    assert frontier.claim("http://h", 5, now) == []
    assert frontier.next_ready_at() is not None and frontier.next_ready_at() >= now + 60  # type: ignore[operator]
    frontier.finish(third, FAILED, 404, "HTTP 404")
    assert frontier.state_of("http://h/p/0") == ("stored", 200, None)
    assert frontier.state_of("http://h/p/2") == ("failed", 404, "HTTP 404")


def test_reopening_requeues_what_was_in_flight(tmp_path: Path) -> None:
    frontier = Frontier(tmp_path / "f.sqlite")
    frontier.add(_urls(4))
    claimed = frontier.claim("http://h", 3, time.time())
    frontier.finish(claimed[0], STORED, 200)
    assert frontier.counts[IN_FLIGHT] == 2
    # no close(): as after a SIGKILL
    reopened = Frontier(tmp_path / "f.sqlite")
    assert (reopened.counts[QUEUED], reopened.counts[IN_FLIGHT], reopened.counts[STORED]) == (3, 0, 1)
    assert [e.url for e in reopened.claim("http://h", 9, time.time())] == [
        f"http://h/p/{i}" for i in (1, 2, 3)
    ]
    frontier.close()
    reopened.close()


def test_ready_origins_respect_next_at(open_frontier: Opener) -> None:
    frontier = open_frontier()
    frontier.add(_urls(1, "http://a") + _urls(1, "http://b"))
    now = time.time()
    frontier.set_next_at("http://a", now + 30)
    assert frontier.ready_origins(now, 10) == ["http://b"]
    assert frontier.ready_origins(now + 31, 10) == ["http://b", "http://a"]


def test_a_shape_whose_pages_stop_giving_new_text_becomes_a_trap(open_frontier: Opener) -> None:
    frontier = open_frontier()
    frontier.add([NewUrl(f"http://h/cal?m={i}", "http://h", 1, pattern="/cal?m") for i in range(100)])
    frontier.add([NewUrl(f"http://h/p/{i}", "http://h", 1, pattern="/p/#") for i in range(100)])
    for _ in range(TRAP_WINDOW * 3):  # numbered pages giving new text are never cut, however many
        assert frontier.judge("http://h", "/p/#", fresh=True) == 0
    for i in range(TRAP_WINDOW - 1):
        assert frontier.judge("http://h", "/cal?m", fresh=i == 3) == 0  # one fresh page in the window
    assert frontier.judge("http://h", "/cal?m", fresh=False) == 100  # 15 of the last 16 gave nothing
    assert frontier.state_of("http://h/cal?m=7") == (
        "skipped",
        None,
        "trap: its URL shape stopped giving new text",
    )
    assert frontier.add([NewUrl("http://h/cal?m=1000", "http://h", 1, pattern="/cal?m")]) == 0
    assert frontier.dropped[DROP_TRAP] == 1 and frontier.state_of("http://h/cal?m=1000") is None
    assert frontier.counts[QUEUED] == 100  # the numbered pages
    reopened = open_frontier()  # the verdict is kept
    assert ("http://h", "/cal?m") in reopened.trapped and ("http://h", "/p/#") not in reopened.trapped


def test_a_large_frontier_stays_on_disk(tmp_path: Path) -> None:
    frontier = Frontier(tmp_path / "f.sqlite")
    for chunk in range(4):
        frontier.add(NewUrl(f"http://h{i % 50}/{chunk}/{i}", f"http://h{i % 50}", 1) for i in range(50_000))
    assert frontier.counts[QUEUED] == 200_000 and frontier.hosts == 50
    assert len(frontier.claim("http://h7", 10, time.time())) == 10
    assert (tmp_path / "f.sqlite").stat().st_size + (tmp_path / "f.sqlite-wal").stat().st_size > 5_000_000
    frontier.close()


def test_claim_hands_out_the_shallowest_first(open_frontier: Opener) -> None:
    frontier = open_frontier()
    frontier.add([NewUrl("http://h/deep", "http://h", 3), NewUrl("http://h/top", "http://h", 0)])
    frontier.add(_urls(2))
    claimed = frontier.claim("http://h", 4, time.time())
    assert [e.url for e in claimed] == ["http://h/top", "http://h/p/0", "http://h/p/1", "http://h/deep"]


def test_host_cap_drops_the_newest_and_a_shallower_url_takes_the_deepest_place(open_frontier: Opener) -> None:
    frontier = open_frontier(max_queued_per_host=4)
    assert frontier.add(_urls(10)) == 4
    assert frontier.add(_urls(2)) == 0  # known URLs are not drops
    assert frontier.add(_urls(3, "http://other")) == 3  # another host's queue is its own
    assert frontier.dropped[DROP_HOST_FULL] == 6
    assert frontier.state_of("http://h/p/9") is None  # a dropped URL leaves no row
    frontier.add([NewUrl("http://h/deeper", "http://h", 2)])  # ranks below all: dropped
    assert frontier.add([NewUrl("http://h/seed", "http://h", 0)]) == 1  # outranks the depth-1 ones
    assert frontier.state_of("http://h/p/3") is None  # the newest of the deepest gave way
    assert frontier.dropped[DROP_HOST_FULL] == 8 and frontier.counts[QUEUED] == 7
    claimed = [e.url for e in frontier.claim("http://h", 9, time.time())]
    assert claimed == ["http://h/seed", "http://h/p/0", "http://h/p/1", "http://h/p/2"]


def test_total_cap_gives_up_the_deepest_anywhere(open_frontier: Opener) -> None:
    frontier = open_frontier(max_queued=5)
    frontier.add([NewUrl(f"http://a/{i}", "http://a", 1) for i in range(3)])
    frontier.add([NewUrl(f"http://b/{i}", "http://b", 3) for i in range(2)])
    assert frontier.add([NewUrl(f"http://c/{i}", "http://c", 3) for i in range(4)]) == 0
    assert frontier.add([NewUrl("http://c/top", "http://c", 2)]) == 1
    assert frontier.state_of("http://b/1") is None and frontier.state_of("http://b/0") is not None
    assert (frontier.counts[QUEUED], frontier.dropped[DROP_FRONTIER_FULL]) == (5, 5)
    reopened = open_frontier(max_queued=5)  # the per-host counts were kept right
    assert reopened.counts[QUEUED] == 5 and reopened.hosts == 3
    assert len(reopened.claim("http://b", 9, time.time())) == 1
    assert reopened.dropped[DROP_FRONTIER_FULL] == 5  # the drop counters persist


def test_a_page_queues_at_most_max_links_new_urls(open_frontier: Opener) -> None:
    frontier = open_frontier()
    frontier.add(_urls(1))
    (page,) = frontier.claim("http://h", 1, time.time())
    links = [NewUrl("http://h/p/0", "http://h", 2)] + [
        NewUrl(f"http://h/l/{i}", "http://h", 2) for i in range(9)
    ]
    assert frontier.finish(page, STORED, 200, links=links, max_links=3) == 3  # the known link is free
    assert frontier.counts[QUEUED] == 3 and frontier.dropped[DROP_PAGE_LINKS] == 6
    assert frontier.state_of("http://h/l/2") == ("queued", None, None)
    assert frontier.state_of("http://h/l/3") is None


def test_a_full_frontier_stays_bounded_on_disk(tmp_path: Path) -> None:
    frontier = Frontier(tmp_path / "f.sqlite", max_queued_per_host=2_000, max_queued=5_000)
    for chunk in range(4):
        frontier.add(
            NewUrl(f"http://h{i % 50}/{chunk}/{i}", f"http://h{i % 50}", 1 + chunk) for i in range(50_000)
        )
    assert frontier.counts[QUEUED] == 5_000
    rows = frontier._db.execute("SELECT origin, COUNT(*) FROM urls GROUP BY origin").fetchall()
    assert sum(n for _, n in rows) == 5_000 and max(n for _, n in rows) <= 2_000
    queued = dict(frontier._db.execute("SELECT origin, queued FROM hosts").fetchall())
    assert queued == dict(rows)  # the incremental per-host counts agree with the rows
    assert frontier.dropped[DROP_FRONTIER_FULL] == 195_000
    frontier.close()


def test_trim_brings_a_queue_over_lower_caps_under_them_deepest_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    frontier = Frontier(path)  # no caps: as a frontier grown before there were any
    frontier.add([NewUrl(f"http://a/{i}", "http://a", 1 + i % 2) for i in range(10)])
    frontier.add(_urls(4, "http://b"))
    frontier.close()
    with sqlite3.connect(path) as db:  # the index of the schema before the caps
        db.execute("DROP INDEX urls_host_queue")
        db.execute("CREATE INDEX urls_queue ON urls(origin, id) WHERE state = 0")
    trimmed = Frontier(path, max_queued_per_host=6, max_queued=8)
    assert (trimmed.trim(max_rows=5), trimmed.trim(max_rows=5), trimmed.trim()) == (5, 1, 0)  # chunks
    names = {r[0] for r in trimmed._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "urls_queue" not in names and "urls_host_queue" in names
    assert trimmed.dropped == {DROP_PAGE_LINKS: 0, DROP_HOST_FULL: 4, DROP_FRONTIER_FULL: 2, DROP_TRAP: 0,
                               DROP_HOST_PAGES: 0, DROP_ROBOTS: 0, DROP_LISTED: 0}  # fmt: skip
    assert trimmed.counts[QUEUED] == 8
    # a's cap took its newest depth-2 URLs (9, 7, 5, 3); the total cap then a/1 (the deepest
    # left) and b/p/3 (the newest of depth 1)
    left = [
        e.url for e in trimmed.claim("http://a", 9, time.time()) + trimmed.claim("http://b", 9, time.time())
    ]
    assert left == ["http://a/0", "http://a/2", "http://a/4", "http://a/6", "http://a/8", "http://b/p/0",
                    "http://b/p/1", "http://b/p/2"]  # fmt: skip
    trimmed.close()


def test_queued_revisits_are_counted_apart_from_new_urls_across_a_reopen(open_frontier: Opener) -> None:
    frontier = open_frontier()
    frontier.add(_urls(3))
    now = time.time()
    for entry in frontier.claim("http://h", 3, now):
        revisit = Revisit(now - 1, 60.0, 60.0, now - 100, body_hash="x", new_version=True)
        frontier.finish(entry, STORED, 200, revisit=revisit)
    frontier.add([NewUrl("http://h/new", "http://h", 1)])
    assert frontier.promote_due(now, 10) == 3
    assert (frontier.counts[QUEUED], frontier.revisits_queued, frontier.stored_total) == (1, 3, 3)
    frontier.close()  # (on PostgreSQL: its hosts' leases given back)
    reopened = open_frontier()
    assert (reopened.counts[QUEUED], reopened.revisits_queued, reopened.stored_total) == (1, 3, 3)
    claimed = reopened.claim("http://h", 4, now)
    assert [e.revisit for e in claimed] == [True, True, True, False]  # revisits first


def test_host_at_its_page_limit_takes_no_new_url_and_claims_within_it(open_frontier: Opener) -> None:
    frontier = open_frontier(max_pages_per_host=2)
    frontier.add(_urls(5))
    entries = frontier.claim("http://h", 4, time.time(), max_new=2)
    assert len(entries) == 2  # the allowance, not the 4 asked
    for e in entries:
        now = time.time()
        frontier.finish(e, STORED, 200, revisit=Revisit(now + 500, 500, 500, now, new_version=True))
    assert frontier.add(_urls(8)[5:]) == 0 and frontier.dropped[DROP_HOST_PAGES] == 3
    assert frontier.add([NewUrl("http://other/", "http://other", 0)]) == 1
    # revisits only and none due: the host waits for its next revisit, not for ever
    assert frontier.claim("http://h", 4, time.time(), max_new=0) == []
    (next_at,) = frontier._db.execute("SELECT next_at FROM hosts WHERE origin = 'http://h'").fetchone()
    assert abs(next_at - (now + 500)) < 1


def test_a_full_disk_changes_no_count_and_its_error_is_the_one_raised(tmp_path: Path) -> None:
    """A transaction that fails on a full disk (PRAGMA max_page_count) leaves the in-memory counts
    as the rows are, and raises SQLite's own error (before: counts[QUEUED] 27 vs 10 rows, and
    'cannot rollback - no transaction is active' in its place)."""
    frontier = Frontier(tmp_path / "f.sqlite", max_queued=10_000)
    frontier.add(_urls(10))
    db = frontier._db
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk fills
    wide = [NewUrl(f"http://x{i}.example/" + "y" * 200, f"http://x{i}.example", 1) for i in range(5000)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        frontier.add(wide)
    assert not db.in_transaction
    rows = db.execute("SELECT COUNT(*) FROM urls WHERE state = 0").fetchone()[0]
    hosts = db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]
    assert (
        (frontier.counts[QUEUED], frontier.hosts, sum(frontier.dropped.values()))
        == (rows, hosts, 0)
        == (10, 1, 0)
    )
    db.execute("PRAGMA max_page_count = 1073741823")  # space again: the same add goes through
    assert frontier.add(wide) == 5000 and frontier.counts[QUEUED] == 5010 and frontier.hosts == 5001
    frontier.close()


def test_postgresql_a_host_is_leased_to_one_machine_and_a_dead_ones_urls_come_back(pg_url: str) -> None:
    """Two machines on one database: the host one claimed is not the other's while its lease
    runs; once the claimer stops renewing it (killed: no close), the other takes it over with its
    in-flight URLs back in the queue, and the dead one's late outcome changes nothing."""
    first = PgFrontier(pg_url, lease_s=1.0)
    second = PgFrontier(pg_url, lease_s=1.0)
    first.add(_urls(4))
    claimed = first.claim("http://h", 3, time.time())
    assert [e.url for e in claimed] == [f"http://h/p/{i}" for i in range(3)]
    assert second.ready_origins(time.time(), 10) == [] and second.claim("http://h", 9, time.time()) == []
    taken = until(
        lambda: [e.url for e in second.claim("http://h", 9, time.time())], "nothing to take over", 30
    )
    assert taken == [f"http://h/p/{i}" for i in range(4)]
    assert first.finish(claimed[0], STORED, 200) == 0  # no longer its own: nothing changes
    assert second.state_of("http://h/p/0") == ("in_flight", None, None)
    second.close()
    first.close()


def test_postgresql_a_machine_done_with_its_hosts_gives_their_leases_back(pg_url: str) -> None:
    """A machine gives back the lease of a host with nothing queued and none of its URLs in
    flight (the other machines' crawls then end without waiting for it to run out); a host with
    URLs queued, or one of its URLs in flight, stays leased."""
    first = PgFrontier(pg_url)
    second = PgFrontier(pg_url)
    first.add(_urls(2) + _urls(2, "http://g") + _urls(1, "http://k"))
    h = first.claim("http://h", 2, time.time())
    g = first.claim("http://g", 1, time.time())  # one of two: the other stays queued
    k = first.claim("http://k", 1, time.time())
    first.finish(h[0], STORED, 200)
    first.finish(g[0], STORED, 200)
    first.finish(k[0], STORED, 200)

    def leased() -> set[str]:
        rows = second._db.execute("SELECT origin FROM hosts WHERE lease_owner IS NOT NULL").fetchall()
        return {origin for (origin,) in rows}

    assert leased() == {"http://h", "http://g", "http://k"}
    first.release_done_hosts()
    assert leased() == {"http://h", "http://g"}  # h: a URL in flight; g: one queued
    first.finish(h[1], STORED, 200)
    first.release_done_hosts()
    assert leased() == {"http://g"}
    assert second.claim("http://g", 9, time.time()) == []  # still the first's
    second.close()
    first.close()


def test_postgresql_ingest_verdicts_count_once_when_two_machines_read_them(pg_url: str) -> None:
    """Two crawlers read the same verdicts from the shared registry: the first to apply them
    moves the shared cursor, the second's copy changes nothing (a shape's window counts each
    page once)."""
    first = PgFrontier(pg_url)
    second = PgFrontier(pg_url)
    urls = [NewUrl(f"http://h/a/{i}", "http://h", 1, pattern="/a/N") for i in range(4)]
    first.add(urls)
    now = time.time()
    first_body = Revisit(now + 60, 60, 60, now, body_hash="x", new_version=True, fresh=True)
    for entry in first.claim("http://h", 4, now):
        first.finish(entry, STORED, 200, revisit=first_body)
    verdicts = [(u.url, False) for u in urls]
    assert (first.feedback_cursor(), second.feedback_cursor()) == (0, 0)
    assert first.ingest_verdicts(verdicts, 4, 0.4) == 4
    assert second.ingest_verdicts(verdicts, 4, 0.4) == 0  # read from 0, but the cursor moved
    (window,) = first._db.execute('SELECT "window" FROM patterns WHERE pattern = ?', ("/a/N",)).fetchone()
    assert window == 0b1111  # four pages, each overruled once to "no new text"
    assert second.feedback_cursor() == 4
    first.close()
    second.close()
