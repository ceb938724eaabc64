"""The crawl frontier on disk: every URL seen, its state, and per-host scheduling, in SQLite (WAL).

A URL is inserted once (its canonical form is the primary key of dedup) and moves
QUEUED -> IN_FLIGHT -> STORED | FAILED | SKIPPED | REDIRECTED, or back to QUEUED for a retry.
Each transition is one transaction, so a process killed at any point (SIGKILL included) reopens
to a consistent frontier: in-flight URLs go back to the queue, nothing queued is lost, and a URL
marked STORED is never fetched again. Memory does not grow with the frontier: lookups go through
SQLite's indexes, not Python sets.

The ``hosts`` table keeps per-origin queue counts and ``next_at`` (unix time before which the
origin gets no request), so "which hosts may be asked now" is one indexed query.

The queue is bounded (issue 19): at most ``max_queued_per_host`` URLs queued per origin and
``max_queued`` in all. A URL offered to a full queue either takes the place of the queue's
lowest-priority URL (the deepest, newest last) or, when it ranks no higher, is dropped. A dropped
URL leaves no row: a later page that links to it offers it again, so a large site is crawled past
the cap as its queue drains, while the disk holds at most the caps' worth of queued rows. Drops
are counted per reason in the ``drops`` table. Both checks read counts kept up to date as URLs
come and go (``hosts.queued`` and ``counts``), and the victim is one step down a partial index.
Only new URLs are checked: a URL back from flight (retry, stop) rejoins the queue even when it
is full, so the queue can pass a cap by the requests in flight, no more.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .politeness import FAR_FUTURE

log = logging.getLogger("crystalline.crawler.frontier")

QUEUED, IN_FLIGHT, STORED, FAILED, SKIPPED, REDIRECTED = range(6)
STATE_NAMES = ("queued", "in_flight", "stored", "failed", "skipped", "redirected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    depth INTEGER NOT NULL,
    redirects INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    status INTEGER,
    error TEXT
);
-- per origin, shallowest and oldest first: what claim() hands out and (read backwards) which
-- URL a full host queue gives up; across origins, the same order for the total cap
CREATE INDEX IF NOT EXISTS urls_host_queue ON urls(origin, depth, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS urls_queue_depth ON urls(depth, id) WHERE state = 0;
DROP INDEX IF EXISTS urls_queue;
CREATE INDEX IF NOT EXISTS urls_in_flight ON urls(state) WHERE state = 1;
CREATE TABLE IF NOT EXISTS hosts (
    origin TEXT PRIMARY KEY,
    queued INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    stored INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hosts_ready ON hosts(next_at) WHERE queued > 0;
CREATE TABLE IF NOT EXISTS patterns (
    origin TEXT NOT NULL,
    pattern TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (origin, pattern)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Why a URL offered to the frontier was not kept (the keys of ``Frontier.dropped``).
DROP_PAGE_LINKS = "links_per_page"  # past a page's cap of new links
DROP_HOST_FULL = "host_queue_full"  # its origin's queue was at max_queued_per_host
DROP_FRONTIER_FULL = "frontier_full"  # the whole queue was at max_queued
DROP_REASONS = (DROP_PAGE_LINKS, DROP_HOST_FULL, DROP_FRONTIER_FULL)

_RECOUNT_HOSTS = (
    "UPDATE hosts SET queued = (SELECT COUNT(*) FROM urls WHERE urls.origin = hosts.origin"
    " AND urls.state = 0)"
)
# the n deepest, newest queued URLs (of one origin): what a queue over its cap gives up first
_TRIM_HOST = (
    "DELETE FROM urls WHERE id IN (SELECT id FROM urls WHERE origin = ? AND state = 0"
    " ORDER BY depth DESC, id DESC LIMIT ?)"
)
_TRIM_ALL = (
    "DELETE FROM urls WHERE id IN (SELECT id FROM urls WHERE state = 0 ORDER BY depth DESC, id DESC LIMIT ?)"
    " RETURNING origin"
)


@dataclass(frozen=True)
class NewUrl:
    """A URL to add: canonical ``url``, its ``origin``, and ``pattern`` for the trap budget."""

    url: str
    origin: str
    depth: int
    redirects: int = 0
    pattern: str | None = None


@dataclass(frozen=True)
class UrlEntry:
    """A claimed URL."""

    id: int
    url: str
    origin: str
    depth: int
    redirects: int
    attempts: int


class Frontier:
    """The SQLite frontier at ``path`` (created if missing); close it when done."""

    def __init__(
        self, path: Path, max_urls_per_pattern: int = 0, *, max_queued_per_host: int = 0, max_queued: int = 0
    ) -> None:
        """Caps of 0 are off: ``max_urls_per_pattern`` (trap budget), ``max_queued_per_host`` and
        ``max_queued`` (URLs waiting per origin and in all)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_urls_per_pattern = max_urls_per_pattern
        self.max_queued_per_host = max_queued_per_host
        self.max_queued = max_queued
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a killed process; after a power cut the last commits may be
            # lost, which refetches a page (its "stored" mark and its links go together) but loses none.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._recover()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise OSError(f"{path}: not a usable frontier database ({exc})") from exc
        self.counts = [0] * len(STATE_NAMES)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM urls GROUP BY state"):
            self.counts[state] = n
        self.hosts = self._db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]
        # URLs not kept, per reason, over the life of this frontier (the drops table)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.dropped.update(self._db.execute("SELECT reason, n FROM drops"))

    def _recover(self) -> None:
        """Put what a previous process had in flight back in the queue and free its hosts."""
        with self._transaction():
            self._db.execute("UPDATE urls SET state = 0 WHERE state = 1")
            self._db.execute(_RECOUNT_HOSTS)
            self._db.execute("UPDATE hosts SET next_at = MIN(next_at, ?)", (time.time(),))

    def trim(self, max_rows: int = 10_000) -> int:
        """Drop up to ``max_rows`` queued URLs over the caps, deepest and newest first; return how
        many (0: the queue is within its caps). For a frontier grown before there were caps (issue
        19 saw 2 million URLs of one site) or caps lowered since: called a chunk at a time, so
        that the crawl loop is never held for long (1.9 million rows take about a minute), while
        the caps already keep such a queue from growing."""
        db = self._db
        dropped = dict.fromkeys(DROP_REASONS, 0)
        left = max_rows
        with self._transaction():
            cap = self.max_queued_per_host
            if cap:
                over = db.execute(
                    "SELECT origin, queued - ? FROM hosts WHERE queued > ?", (cap, cap)
                ).fetchall()
                for origin, excess in over:
                    n = db.execute(_TRIM_HOST, (origin, min(excess, left))).rowcount
                    db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (n, origin))
                    self.counts[QUEUED] -= n
                    dropped[DROP_HOST_FULL] += n
                    left -= n
                    if left <= 0:
                        break
            excess = self.counts[QUEUED] - self.max_queued if self.max_queued else 0
            if excess > 0 and left > 0:
                per_origin: dict[str, int] = {}
                for (origin,) in db.execute(_TRIM_ALL, (min(excess, left),)).fetchall():
                    per_origin[origin] = per_origin.get(origin, 0) + 1
                for origin, n in per_origin.items():
                    db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (n, origin))
                dropped[DROP_FRONTIER_FULL] = sum(per_origin.values())
                self.counts[QUEUED] -= dropped[DROP_FRONTIER_FULL]
            _write_drops(db, dropped)
        for reason, n in dropped.items():
            self.dropped[reason] += n
        trimmed = sum(dropped.values())
        if trimmed:
            log.info("frontier %s: %d queued URLs over the caps dropped", self.path, trimmed)
        return trimmed

    def _transaction(self) -> sqlite3.Connection:
        return _Transaction(self._db)  # type: ignore[return-value]

    def close(self) -> None:
        self._db.close()

    def disk_bytes(self) -> int:
        """The database's size on disk, its write-ahead log included."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += Path(f"{self.path}{suffix}").stat().st_size
        return total

    # -- adding ---------------------------------------------------------------------------------

    def add(self, urls: Iterable[NewUrl], max_new: int = 0) -> int:
        """Queue the URLs not seen before, at most ``max_new`` of them (0: no limit); return how
        many were queued."""
        with self._transaction():
            return self._add(urls, max_new)

    def _add(self, urls: Iterable[NewUrl], max_new: int = 0) -> int:
        batch = _Batch(self._db)
        added = 0
        pending = iter(urls)
        for new in pending:
            if max_new and added >= max_new:
                # not looked up: some of these may be known already (a page's cap costs no reads)
                batch.dropped[DROP_PAGE_LINKS] += 1 + sum(1 for _ in pending)
                break
            if self._admit(new, batch):
                added += 1
        self._commit_batch(batch)
        return added

    def _admit(self, new: NewUrl, batch: _Batch) -> bool:
        """Queue one URL within the caps (inside the caller's transaction); True if it was queued."""
        db = self._db
        victim: _Victim | None = None
        reason = ""
        if self.max_queued_per_host and batch.queued(new.origin) >= self.max_queued_per_host:
            reason = DROP_HOST_FULL
        elif self.max_queued and self.counts[QUEUED] >= self.max_queued:
            reason = DROP_FRONTIER_FULL
        if reason:
            if db.execute("SELECT 1 FROM urls WHERE url = ?", (new.url,)).fetchone() is not None:
                return False  # known: not a drop
            victim = batch.victim(new.origin if reason == DROP_HOST_FULL else None)
            if victim is None or victim.depth <= new.depth:
                batch.dropped[reason] += 1  # it ranks no higher than anything queued there
                return False
        cur = db.execute(
            "INSERT OR IGNORE INTO urls (url, origin, depth, redirects) VALUES (?, ?, ?, ?)",
            (new.url, new.origin, new.depth, new.redirects),
        )
        if cur.rowcount != 1:
            return False
        if new.pattern is not None and self.max_urls_per_pattern > 0:
            (n,) = db.execute(
                "INSERT INTO patterns VALUES (?, ?, 1) ON CONFLICT DO UPDATE SET n = n + 1 RETURNING n",
                (new.origin, new.pattern),
            ).fetchone()
            if n > self.max_urls_per_pattern:
                db.execute(
                    "UPDATE urls SET state = ?, error = ? WHERE id = ?",
                    (SKIPPED, "trap: too many URLs of one pattern", cur.lastrowid),
                )
                self.counts[SKIPPED] += 1
                return False  # not queued, so the victim stays
        if victim is not None:  # the new URL outranks it: the victim leaves the queue (and the disk)
            db.execute("DELETE FROM urls WHERE id = ?", (victim.id,))
            batch.dropped[reason] += 1
            batch.change(victim.origin, -1)
            self.counts[QUEUED] -= 1
        batch.change(new.origin, +1)
        self.counts[QUEUED] += 1
        return True

    def _commit_batch(self, batch: _Batch) -> None:
        """Write the batch's per-origin queue counts and drop counters (inside its transaction)."""
        db = self._db
        for origin in batch.grew:
            if db.execute("INSERT OR IGNORE INTO hosts (origin) VALUES (?)", (origin,)).rowcount:
                self.hosts += 1
        for origin, delta in batch.delta.items():
            if delta:
                db.execute("UPDATE hosts SET queued = queued + ? WHERE origin = ?", (delta, origin))
        _write_drops(db, batch.dropped)
        for reason, n in batch.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    # -- scheduling -----------------------------------------------------------------------------

    def ready_origins(self, now: float, limit: int) -> list[str]:
        """Origins with queued URLs whose next_at has come, longest waiting first."""
        rows = self._db.execute(
            "SELECT origin FROM hosts WHERE queued > 0 AND next_at <= ? ORDER BY next_at LIMIT ?",
            (now, limit),
        )
        return [r[0] for r in rows]

    def next_ready_at(self) -> float | None:
        """The earliest next_at of an origin with queued URLs (None: nothing queued anywhere)."""
        row = self._db.execute("SELECT MIN(next_at) FROM hosts WHERE queued > 0").fetchone()
        return None if row[0] is None else float(row[0])

    def claim(self, origin: str, n: int, now: float) -> list[UrlEntry]:
        """Mark up to ``n`` of the origin's queued URLs in flight (shallowest, then oldest first)
        and return them.
        When all its queued URLs wait for a retry time, the origin's next_at moves there."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT id, url, depth, redirects, attempts FROM urls"
                " WHERE origin = ? AND state = 0 AND not_before <= ? ORDER BY depth, id LIMIT ?",
                (origin, now, n),
            ).fetchall()
            if not rows:
                wait = self._db.execute(
                    "SELECT MIN(not_before), COUNT(*) FROM urls WHERE origin = ? AND state = 0", (origin,)
                ).fetchone()
                self._db.execute(
                    "UPDATE hosts SET queued = ?, next_at = MAX(next_at, ?) WHERE origin = ?",
                    (wait[1], wait[0] or 0.0, origin),
                )
                return []
            self._db.executemany("UPDATE urls SET state = 1 WHERE id = ?", [(r[0],) for r in rows])
            self._db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (len(rows), origin))
        self.counts[QUEUED] -= len(rows)
        self.counts[IN_FLIGHT] += len(rows)
        return [UrlEntry(r[0], r[1], origin, r[2], r[3], r[4]) for r in rows]

    def set_next_at(self, origin: str, when: float) -> None:
        self._db.execute("UPDATE hosts SET next_at = ? WHERE origin = ?", (when, origin))

    def host_stored(self, origin: str) -> int:
        row = self._db.execute("SELECT stored FROM hosts WHERE origin = ?", (origin,)).fetchone()
        return int(row[0]) if row else 0

    def drop_host_queue(self, origin: str, reason: str) -> int:
        """Skip every queued URL of the origin (its page limit is reached); return how many."""
        with self._transaction():
            n = self._db.execute(
                "UPDATE urls SET state = ?, error = ? WHERE origin = ? AND state = 0",
                (SKIPPED, reason, origin),
            ).rowcount
            self._db.execute("UPDATE hosts SET queued = 0 WHERE origin = ?", (origin,))
        self.counts[QUEUED] -= n
        self.counts[SKIPPED] += n
        return n

    # -- outcomes -------------------------------------------------------------------------------

    def finish(
        self,
        entry: UrlEntry,
        state: int,
        status: int = 0,
        error: str = "",
        links: Iterable[NewUrl] = (),
        max_links: int = 0,
    ) -> int:
        """Record an in-flight URL's final state and queue its links, at most ``max_links`` new
        ones (0: no limit), in one transaction (a page's "stored" mark and its links are durable
        together); return how many links were queued."""
        with self._transaction():
            self._db.execute(
                "UPDATE urls SET state = ?, status = ?, error = ?, attempts = attempts + 1 WHERE id = ?",
                (state, status or None, error or None, entry.id),
            )
            if state == STORED:
                self._db.execute("UPDATE hosts SET stored = stored + 1 WHERE origin = ?", (entry.origin,))
            added = self._add(links, max_links)
        self.counts[IN_FLIGHT] -= 1
        self.counts[state] += 1
        return added

    def retry(self, entry: UrlEntry, not_before: float, status: int = 0, error: str = "") -> None:
        """Put an in-flight URL back in the queue, not to be fetched before ``not_before``."""
        with self._transaction():
            self._db.execute(
                "UPDATE urls SET state = 0, attempts = attempts + 1, not_before = ?, status = ?, error = ?"
                " WHERE id = ?",
                (not_before, status or None, error or None, entry.id),
            )
            self._db.execute("UPDATE hosts SET queued = queued + 1 WHERE origin = ?", (entry.origin,))
        self.counts[IN_FLIGHT] -= 1
        self.counts[QUEUED] += 1

    def release(self, entry: UrlEntry) -> None:
        """Return an in-flight URL to the queue unchanged (the crawl stopped before its outcome)."""
        with self._transaction():
            self._db.execute("UPDATE urls SET state = 0 WHERE id = ? AND state = 1", (entry.id,))
            self._db.execute("UPDATE hosts SET queued = queued + 1 WHERE origin = ?", (entry.origin,))
        self.counts[IN_FLIGHT] -= 1
        self.counts[QUEUED] += 1

    def free_hosts(self) -> None:
        """Clear "slot full" marks (at the end of a run no request is in flight any more)."""
        self._db.execute("UPDATE hosts SET next_at = ? WHERE next_at >= ?", (time.time(), FAR_FUTURE))

    def state_of(self, url: str) -> tuple[str, int | None, str | None] | None:
        """(state name, HTTP status, error) of a URL, or None if never seen: for tests and tools."""
        row = self._db.execute("SELECT state, status, error FROM urls WHERE url = ?", (url,)).fetchone()
        return None if row is None else (STATE_NAMES[row[0]], row[1], row[2])


def _write_drops(db: sqlite3.Connection, dropped: dict[str, int]) -> None:
    for reason, n in dropped.items():
        if n:
            db.execute(
                "INSERT INTO drops VALUES (?, ?) ON CONFLICT DO UPDATE SET n = n + excluded.n", (reason, n)
            )


@dataclass(frozen=True)
class _Victim:
    """The queued URL a full queue gives up first: the deepest, and of those the newest."""

    id: int
    origin: str
    depth: int


class _Batch:
    """One ``add``'s bookkeeping: per-origin queue counts (read once, written once at the end),
    the cached victims of full queues, and the drops per reason."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._base: dict[str, int] = {}
        self.delta: dict[str, int] = {}
        self.grew: set[str] = set()  # origins that got a URL (their hosts row must exist)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._victims: dict[str | None, _Victim | None] = {}  # origin, or None for the whole queue

    def queued(self, origin: str) -> int:
        if origin not in self._base:
            row = self._db.execute("SELECT queued FROM hosts WHERE origin = ?", (origin,)).fetchone()
            self._base[origin] = int(row[0]) if row else 0
        return self._base[origin] + self.delta.get(origin, 0)

    def change(self, origin: str, n: int) -> None:
        self.queued(origin)
        self.delta[origin] = self.delta.get(origin, 0) + n
        if n > 0:
            self.grew.add(origin)
        self._victims.pop(origin, None)  # the origin's queue changed, and so did the whole one
        self._victims.pop(None, None)

    def victim(self, origin: str | None) -> _Victim | None:
        """The victim of the origin's queue, or of the whole queue when ``origin`` is None."""
        if origin not in self._victims:
            if origin is None:
                row = self._db.execute(
                    "SELECT id, origin, depth FROM urls WHERE state = 0 ORDER BY depth DESC, id DESC LIMIT 1"
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT id, origin, depth FROM urls WHERE origin = ? AND state = 0"
                    " ORDER BY depth DESC, id DESC LIMIT 1",
                    (origin,),
                ).fetchone()
            self._victims[origin] = None if row is None else _Victim(row[0], row[1], row[2])
        return self._victims[origin]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
