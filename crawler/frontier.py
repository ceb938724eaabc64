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
from dataclasses import dataclass, replace
from pathlib import Path

from ..postgres import Sql
from ..sql_tables import META as KEY_VALUE
from ..sql_tables import Table, columns
from .politeness import FAR_FUTURE

log = logging.getLogger("crystalline.crawler.frontier")


QUEUED, IN_FLIGHT, STORED, FAILED, SKIPPED, REDIRECTED = range(6)
PAGE, SITEMAP = 0, 1  # what a URL is: a page for the sink, or a sitemap that seeds the frontier
STATE_NAMES = ("queued", "in_flight", "stored", "failed", "skipped", "redirected")

# The frontier's tables, for both backends (``crystalline.sql_tables``): the SQLite frontier
# creates each with its first columns (up to ``_SQLITE_FIRST``) and adds the later ones (issue 12)
# with ALTER TABLE when an older frontier is opened; ``frontier_pg.py`` creates them whole, with
# what a cluster needs on top (host leases, the claimer of each in-flight URL).
URLS = Table(
    "urls",
    columns("""
    id id
    url text NOT NULL UNIQUE
    origin text NOT NULL
    depth int NOT NULL
    redirects int NOT NULL DEFAULT 0
    state int NOT NULL DEFAULT 0
    attempts int NOT NULL DEFAULT 0
    not_before real NOT NULL DEFAULT 0
    status int
    error text
    pattern text  -- the URL's shape (urls.url_pattern), for the trap verdicts
    next_visit real  -- a stored URL's revisit time
    interval real NOT NULL DEFAULT 0  -- its current revisit interval
    prev_interval real NOT NULL DEFAULT 0  -- the one before the last change (ingest may undo it)
    etag text
    last_modified text
    body_hash text  -- SHA-256 of the last body handed to the sink
    fetched_at real
    versions int NOT NULL DEFAULT 0  -- bodies handed to the sink (0: never stored)
    fresh int  -- the crawler's verdict on its first body: 1 new text, 0 none
    kind int NOT NULL DEFAULT 0  -- PAGE or SITEMAP
    -- its shape's verdict count (patterns.n) once its own was in: where that verdict sits in the
    -- window, so that ingest's later verdict replaces it rather than pushing a second one
    judged_n int
    """),
)
HOSTS = Table(
    "hosts",
    columns("""
    origin text PRIMARY KEY
    queued int NOT NULL DEFAULT 0
    next_at real NOT NULL DEFAULT 0
    stored int NOT NULL DEFAULT 0
    deferred_until real NOT NULL DEFAULT 0
    defer_reason text
    defer_count int NOT NULL DEFAULT 0
    day_start real NOT NULL DEFAULT 0
    day_fetches int NOT NULL DEFAULT 0
    -- new URLs sitemaps and feeds listed for the origin in its listing day (from listed_day_start)
    listed_day_start real NOT NULL DEFAULT 0
    listed_day int NOT NULL DEFAULT 0
    fetched int NOT NULL DEFAULT 0
    errors int NOT NULL DEFAULT 0
    """),
    without_rowid=True,
)
PATTERNS = Table(
    "patterns",
    columns("""
    origin text NOT NULL
    pattern text NOT NULL
    n int NOT NULL
    window int64 NOT NULL DEFAULT 0  -- the last TRAP_WINDOW verdicts, one bit each (1: no new text)
    trapped int NOT NULL DEFAULT 0
    """),
    constraints=("PRIMARY KEY (origin, pattern)",),
    without_rowid=True,
)
DROPS = Table("drops", columns("reason text PRIMARY KEY\nn int64 NOT NULL"), without_rowid=True)
ROBOTS = Table(
    "robots",
    columns("""
    origin text PRIMARY KEY
    fetched_at real NOT NULL
    status int NOT NULL
    body blob NOT NULL
    """),
    without_rowid=True,
)
META = replace(KEY_VALUE, without_rowid=True)
TABLES = (URLS, HOSTS, PATTERNS, DROPS, ROBOTS, META)
# the SQLite frontier's first schema: the columns its CREATE TABLE has (the later ones are added)
_SQLITE_FIRST = {"urls": "error", "hosts": "stored", "patterns": "n"}

_SCHEMA = f"""
{URLS.create("sqlite", _SQLITE_FIRST["urls"])};
-- per origin, shallowest and oldest first: what claim() hands out and (read backwards) which
-- URL a full host queue gives up; across origins, the same order for the total cap
CREATE INDEX IF NOT EXISTS urls_host_queue ON urls(origin, depth, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS urls_queue_depth ON urls(depth, id) WHERE state = 0;
DROP INDEX IF EXISTS urls_queue;
CREATE INDEX IF NOT EXISTS urls_in_flight ON urls(state) WHERE state = 1;
{HOSTS.create("sqlite", _SQLITE_FIRST["hosts"])};
CREATE INDEX IF NOT EXISTS hosts_ready ON hosts(next_at) WHERE queued > 0;
{PATTERNS.create("sqlite", _SQLITE_FIRST["patterns"])};
{DROPS.create("sqlite")};
{ROBOTS.create("sqlite")};
{META.create("sqlite")};
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS urls_revisit ON urls(next_visit) WHERE state = 2;
CREATE INDEX IF NOT EXISTS urls_host_revisit ON urls(origin, next_visit) WHERE state = 2;
CREATE INDEX IF NOT EXISTS urls_revisit_queue ON urls(origin, id) WHERE state = 0 AND versions > 0;
CREATE INDEX IF NOT EXISTS robots_age ON robots(fetched_at);
"""


# Why a URL offered to the frontier was not kept (the keys of ``Frontier.dropped``).
DROP_PAGE_LINKS = "links_per_page"  # past a page's cap of new links
DROP_HOST_FULL = "host_queue_full"  # its origin's queue was at max_queued_per_host
DROP_FRONTIER_FULL = "frontier_full"  # the whole queue was at max_queued
DROP_TRAP = "trap"  # its host and URL shape stopped giving new text
DROP_HOST_PAGES = "host_page_limit"  # its origin has stored max_pages_per_host pages
DROP_ROBOTS = "robots"  # its origin's robots.txt (known at the time) disallows it
DROP_LISTED = "listed_per_host_per_day"  # a sitemap or feed listed it past its origin's daily budget
DROP_REASONS = (
    DROP_PAGE_LINKS, DROP_HOST_FULL, DROP_FRONTIER_FULL, DROP_TRAP, DROP_HOST_PAGES, DROP_ROBOTS, DROP_LISTED
)  # fmt: skip

# robots.txt bodies kept in the frontier for reuse after a restart: a larger one is fetched again
# instead (a site's is a few KiB; 500 KiB, what must be parsed, times 100k hosts would be 50 GB)
ROBOTS_STORED_MAX_BYTES = 64 * 1024

# A URL shape is a trap when at least TRAP_DUPLICATES of its last TRAP_WINDOW pages gave no new
# text (exact or near duplicates, judged by the crawler at fetch and by ingest afterwards). A
# calendar's empty days, a session id's copies or a faceted search's reorderings do; numbered
# articles of a news site do not, however many there are.
TRAP_WINDOW = 16
TRAP_DUPLICATES = 15

_RECOUNT_HOSTS = (
    "UPDATE hosts SET queued = (SELECT COUNT(*) FROM urls WHERE urls.origin = hosts.origin"
    " AND urls.state = 0)"
)
# the n deepest, newest queued URLs (of one origin): what a queue over its cap gives up first
# (a queued revisit, versions > 0, is a stored page: it never gives way)
_TRIM_HOST = (
    "DELETE FROM urls WHERE id IN (SELECT id FROM urls WHERE origin = ? AND state = 0 AND versions = 0"
    " ORDER BY depth DESC, id DESC LIMIT ?)"
)
_TRIM_ALL = (
    "DELETE FROM urls WHERE id IN (SELECT id FROM urls WHERE state = 0 AND versions = 0"
    " ORDER BY depth DESC, id DESC LIMIT ?) RETURNING origin"
)
_ENTRY_COLUMNS = (
    "id, url, depth, redirects, attempts, versions, etag, last_modified, body_hash, interval, pattern, kind"
)


@dataclass(frozen=True)
class NewUrl:
    """A URL to add: canonical ``url``, its ``origin``, and ``pattern`` for the trap budget."""

    url: str
    origin: str
    depth: int
    redirects: int = 0
    pattern: str | None = None
    interval: float = 0.0  # a first revisit interval (a sitemap's changefreq); 0: the default
    kind: int = PAGE
    listed: bool = False  # from a sitemap or feed: counts against max_listed_per_host_per_day


@dataclass(frozen=True)
class UrlEntry:
    """A claimed URL; ``versions`` > 0 makes it a revisit of a stored page (with the validators
    and body hash of its last fetch)."""

    id: int
    url: str
    origin: str
    depth: int
    redirects: int
    attempts: int
    versions: int = 0
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    interval: float = 0.0
    pattern: str | None = None
    kind: int = PAGE

    @property
    def revisit(self) -> bool:
        return self.versions > 0


@dataclass(frozen=True)
class Revisit:
    """What a fetch of a URL tells its revisit schedule (see ``Frontier.finish``)."""

    next_visit: float
    interval: float
    prev_interval: float
    fetched_at: float
    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None
    new_version: bool = False  # a body handed to the sink (first or changed)
    fresh: bool | None = None  # a first body's verdict: new text (True) or none (False)


@dataclass(frozen=True)
class HostReport:
    """One origin's line of ``status --json``'s ``crawler.hosts``."""

    origin: str
    fetched: int
    stored: int
    queued: int
    errors: int
    deferred_until: float
    defer_reason: str | None
    next_visit: float | None

    def as_dict(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {
            "host": self.origin,
            "fetched": self.fetched,
            "stored": self.stored,
            "queued": self.queued,
            "errors": self.errors,
            "next_visit": round(self.next_visit, 1) if self.next_visit is not None else None,
        }
        if self.deferred_until > now:  # flat, for tables: why, and when it is asked again
            out["deferred"] = self.defer_reason or ""
            out["retry_at"] = round(self.deferred_until, 1)
        return out


class Frontier:
    """The SQLite frontier at ``path`` (created if missing); close it when done.

    ``PgFrontier`` (``crawler/frontier_pg.py``) keeps the same tables on PostgreSQL for several
    machines; the statements here are written for both (``GREATEST``/``LEAST``, ``ON CONFLICT``)."""

    # an in-flight URL is settled (finish, retry, release) only while it is still in flight, so a
    # settlement applied twice (replayed after a lost connection) changes nothing the second time;
    # on PostgreSQL also only by the machine that claimed it (another may have taken it over)
    _OWNED = ""

    def _owner(self) -> tuple[str, ...]:
        """The parameters of ``_OWNED``."""
        return ()

    def __init__(
        self,
        path: Path,
        *,
        max_queued_per_host: int = 0,
        max_queued: int = 0,
        max_pages_per_host: int = 0,
        max_listed_per_host_per_day: int = 0,
    ) -> None:
        """Caps of 0 are off: ``max_queued_per_host`` and ``max_queued`` (URLs waiting per origin
        and in all), ``max_pages_per_host`` (an origin with that many pages stored takes no new
        URL: it would stay queued forever), ``max_listed_per_host_per_day`` (new URLs that
        sitemaps and feeds may queue for one origin per day; more are dropped as ``DROP_LISTED``)."""
        self._set_caps(max_queued_per_host, max_queued, max_pages_per_host, max_listed_per_host_per_day)
        self._open(path)
        self._load_counts()

    def _set_caps(self, per_host: int, total: int, pages_per_host: int, listed_per_day: int) -> None:
        self.max_queued_per_host = per_host
        self.max_queued = total
        self.max_pages_per_host = pages_per_host
        self.max_listed_per_host_per_day = listed_per_day

    def _open(self, path: Path) -> None:
        """Open (create, migrate) the SQLite frontier and put a previous run's in-flight URLs back."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._sqlite = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db: Sql = self._sqlite
        # the scalar GREATEST/LEAST of PostgreSQL, so that both backends run the same statements
        self._sqlite.create_function("greatest", 2, max, deterministic=True)
        self._sqlite.create_function("least", 2, min, deterministic=True)
        try:
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a killed process; after a power cut the last commits may be
            # lost, which refetches a page (its "stored" mark and its links go together) but loses none.
            self._sqlite.execute("PRAGMA synchronous=NORMAL")
            self._sqlite.executescript(_SCHEMA)
            self._add_columns()
            self._sqlite.executescript(_INDEXES)
            self._recover()
        except sqlite3.DatabaseError as exc:
            self._sqlite.close()
            raise OSError(f"{path}: not a usable frontier database ({exc})") from exc

    def _load_counts(self) -> None:
        """Read the in-memory counts and the trapped shapes from the tables."""
        self.counts = [0] * len(STATE_NAMES)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM urls GROUP BY state"):
            self.counts[state] = n
        self.hosts = self._db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]
        # URLs not kept, per reason, over the life of this frontier (the drops table)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.dropped.update(self._db.execute("SELECT reason, n FROM drops"))
        # queued revisits (stored pages back in the queue): counted apart from the new URLs queued
        # (counts[QUEUED], what the caps hold), and in the stored total
        (self.revisits_queued,) = self._db.execute(
            "SELECT COUNT(*) FROM urls WHERE state = 0 AND versions > 0"
        ).fetchone()
        self.counts[QUEUED] -= self.revisits_queued
        # sitemaps kept for revisits are no pages: the stored total leaves them out
        (self.sitemaps_kept,) = self._db.execute(
            "SELECT COUNT(*) FROM urls WHERE kind = ? AND versions > 0 AND state IN (0, 1, 2)", (SITEMAP,)
        ).fetchone()
        # changed bodies handed to the sink by revisits, all runs: the new versions of stored pages
        row = self._db.execute("SELECT value FROM meta WHERE key = 'new_versions'").fetchone()
        self.new_versions = int(row[0]) if row else 0
        # (origin, shape) pairs found to be traps: few, kept in memory so admission reads nothing
        self.trapped = set(self._db.execute("SELECT origin, pattern FROM patterns WHERE trapped = 1"))

    def _add_columns(self) -> None:
        """Add the columns an older frontier lacks (those after ``_SQLITE_FIRST``)."""
        for table in (URLS, HOSTS, PATTERNS):
            have = {str(r[1]) for r in self._db.execute(f"PRAGMA table_info({table.name})")}
            for column in table.after(_SQLITE_FIRST[table.name]):
                if column.name not in have:
                    self._db.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.sql('sqlite')}")
            if table is URLS and "next_visit" not in have:
                # pages stored before revisits existed: due over the next day, spread out
                self._db.execute(
                    "UPDATE urls SET fetched_at = 0, next_visit = ? + (abs(random()) % 86400)"
                    " WHERE state = 2",
                    (time.time(),),
                )

    def _recover(self) -> None:
        """Put what a previous process had in flight back in the queue and free its hosts (a
        deferred host stays deferred)."""
        with self._transaction():
            self._db.execute("UPDATE urls SET state = 0 WHERE state = 1")
            self._db.execute(_RECOUNT_HOSTS)
            self._db.execute(
                "UPDATE hosts SET next_at = GREATEST(LEAST(next_at, ?), deferred_until)", (time.time(),)
            )

    @property
    def stored_total(self) -> int:
        """Pages stored in this frontier, all runs: those done and those queued for a revisit."""
        return self.counts[STORED] + self.revisits_queued - self.sitemaps_kept

    def trim(self, max_rows: int = 10_000) -> int:
        """Drop up to ``max_rows`` queued URLs over the caps, deepest and newest first; return how
        many (0: the queue is within its caps). For a frontier grown before there were caps (issue
        19 saw 2 million URLs of one site) or caps lowered since: called a chunk at a time, so
        that the crawl loop is never held for long (1.9 million rows take about a minute), while
        the caps already keep such a queue from growing."""
        db = self._db
        dropped = dict.fromkeys(DROP_REASONS, 0)
        left = max_rows
        # the counters change once the transaction has committed (a failed COMMIT changes nothing)
        queued = self.counts[QUEUED]
        with self._transaction():
            cap = self.max_queued_per_host
            if cap:
                over = db.execute(
                    "SELECT origin, queued - ? FROM hosts WHERE queued > ?", (cap, cap)
                ).fetchall()
                for origin, excess in over:
                    n = db.execute(_TRIM_HOST, (origin, min(excess, left))).rowcount
                    db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (n, origin))
                    queued -= n
                    dropped[DROP_HOST_FULL] += n
                    left -= n
                    if left <= 0:
                        break
            excess = queued - self.max_queued if self.max_queued else 0
            if excess > 0 and left > 0:
                per_origin: dict[str, int] = {}
                for (origin,) in db.execute(_TRIM_ALL, (min(excess, left),)).fetchall():
                    per_origin[origin] = per_origin.get(origin, 0) + 1
                for origin, n in per_origin.items():
                    db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (n, origin))
                dropped[DROP_FRONTIER_FULL] = sum(per_origin.values())
                queued -= dropped[DROP_FRONTIER_FULL]
            _write_drops(db, dropped)
        self.counts[QUEUED] = queued
        for reason, n in dropped.items():
            self.dropped[reason] += n
        trimmed = sum(dropped.values())
        if trimmed:
            log.info("frontier %s: %d queued URLs over the caps dropped", self.path, trimmed)
        return trimmed

    def backend(self) -> dict[str, object]:
        """Where the frontier lives, for status (``PgFrontier``: the database's state too)."""
        return {"kind": "sqlite", "path": str(self.path)}

    def renew_leases(self, origins: Iterable[str], now: float) -> None:
        """Keep this process's hold on ``origins`` while it fetches from them: a SQLite frontier
        has one process, which holds every host (``PgFrontier`` leases hosts)."""

    def release_done_hosts(self) -> None:
        """Give back the hosts this process holds that have nothing queued and none of its
        requests in flight (while it has none): a SQLite frontier holds no leases."""

    def settle_pending(self) -> None:
        """Write outcomes kept while the database was away: a SQLite write fails or succeeds at
        once, none is kept (``PgFrontier`` keeps them through an outage)."""

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return _Transaction(self._sqlite)

    def close(self) -> None:
        self._sqlite.close()

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
            added, _, batch = self._add(urls, max_new)
        self._counted(batch)
        return added

    def _add(
        self, urls: Iterable[NewUrl], max_new: int = 0, shape: str | None = None
    ) -> tuple[int, int, _Batch]:
        """Queue new URLs (inside the caller's transaction); return how many, how many of them
        have another shape than ``shape`` (what a page gave beyond its own shape), and the batch
        whose counts the caller applies once the transaction has committed (``_counted``)."""
        batch = _Batch(self._db)
        added = other = 0
        pending = iter(urls)
        for new in pending:
            if max_new and added >= max_new:
                # not looked up: some of these may be known already (a page's cap costs no reads)
                batch.dropped[DROP_PAGE_LINKS] += 1 + sum(1 for _ in pending)
                break
            if self._admit(new, batch):
                added += 1
                other += new.pattern != shape
        self._commit_batch(batch)
        return added, other, batch

    def _admit(self, new: NewUrl, batch: _Batch) -> bool:
        """Queue one URL within the caps (inside the caller's transaction); True if it was queued."""
        db = self._db
        victim: _Victim | None = None
        reason = ""
        if new.pattern is not None and (new.origin, new.pattern) in self.trapped:
            if db.execute("SELECT 1 FROM urls WHERE url = ?", (new.url,)).fetchone() is None:
                batch.dropped[DROP_TRAP] += 1
            return False
        if self.max_pages_per_host and batch.stored(new.origin) >= self.max_pages_per_host:
            if db.execute("SELECT 1 FROM urls WHERE url = ?", (new.url,)).fetchone() is None:
                batch.dropped[DROP_HOST_PAGES] += 1
            return False
        if self.max_queued_per_host and batch.queued(new.origin) >= self.max_queued_per_host:
            reason = DROP_HOST_FULL
        elif self.max_queued and self.counts[QUEUED] + batch.total >= self.max_queued:
            reason = DROP_FRONTIER_FULL
        listed = new.listed and self.max_listed_per_host_per_day > 0
        if not reason and listed and batch.listed(new.origin) >= self.max_listed_per_host_per_day:
            reason = DROP_LISTED
        if reason == DROP_LISTED:
            if db.execute("SELECT 1 FROM urls WHERE url = ?", (new.url,)).fetchone() is None:
                batch.dropped[DROP_LISTED] += 1
            return False
        if reason:
            if db.execute("SELECT 1 FROM urls WHERE url = ?", (new.url,)).fetchone() is not None:
                return False  # known: not a drop
            victim = batch.victim(new.origin if reason == DROP_HOST_FULL else None)
            if victim is None or victim.depth <= new.depth:
                batch.dropped[reason] += 1  # it ranks no higher than anything queued there
                return False
        cur = db.execute(
            "INSERT INTO urls (url, origin, depth, redirects, pattern, interval, kind)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (new.url, new.origin, new.depth, new.redirects, new.pattern, new.interval, new.kind),
        )
        if cur.rowcount != 1:
            return False
        if victim is not None:  # the new URL outranks it: the victim leaves the queue (and the disk)
            db.execute("DELETE FROM urls WHERE id = ?", (victim.id,))
            batch.dropped[reason] += 1
            batch.change(victim.origin, -1)
        batch.change(new.origin, +1)
        if listed:
            batch.list_one(new.origin)
        return True

    def _commit_batch(self, batch: _Batch) -> None:
        """Write the batch's per-origin queue counts and drop counters (inside its transaction)."""
        db = self._db
        for origin in batch.grew:
            if db.execute("INSERT INTO hosts (origin) VALUES (?) ON CONFLICT DO NOTHING", (origin,)).rowcount:
                batch.new_hosts += 1
        for origin, delta in batch.delta.items():
            if delta:
                db.execute("UPDATE hosts SET queued = queued + ? WHERE origin = ?", (delta, origin))
        for origin, (start, n) in batch.listed_days.items():
            db.execute(
                "UPDATE hosts SET listed_day_start = ?, listed_day = ? WHERE origin = ?", (start, n, origin)
            )
        _write_drops(db, batch.dropped)

    def _counted(self, batch: _Batch) -> None:
        """The batch's changes to the in-memory counters, after its transaction committed."""
        self.counts[QUEUED] += batch.total
        self.hosts += batch.new_hosts
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
        """The earliest next_at of an origin with queued URLs that is not deferred (None: no such
        origin: the queue is empty or only deferred hosts hold URLs)."""
        # one step down hosts_ready (a deferred host's next_at is its deferral's end: it sorts late)
        row = self._db.execute(
            "SELECT next_at FROM hosts WHERE queued > 0 AND deferred_until <= ? ORDER BY next_at LIMIT 1",
            (time.time(),),
        ).fetchone()
        return None if row is None else float(row[0])

    def claim(self, origin: str, n: int, now: float, max_new: int | None = None) -> list[UrlEntry]:
        """Mark up to ``n`` of the origin's queued URLs in flight and return them: revisits first
        (their number in the queue is what keeps them to their share, see ``Crawler._promote``),
        then at most ``max_new`` new URLs (None: no limit; 0: the host is at its page limit),
        shallowest and oldest first. Each counts against the host's fetches of the day.
        When all its queued URLs wait for a retry time, the origin's next_at moves there."""
        revisits_only = max_new == 0
        with self._transaction():
            rows = self._db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM urls WHERE origin = ? AND state = 0 AND versions > 0"
                " AND not_before <= ? ORDER BY id LIMIT ?",
                (origin, now, n),
            ).fetchall()
            if len(rows) < n and not revisits_only:
                k = n - len(rows) if max_new is None else min(n - len(rows), max_new)
                rows += self._db.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM urls WHERE origin = ? AND state = 0 AND versions = 0"
                    " AND not_before <= ? ORDER BY depth, id LIMIT ?",
                    (origin, now, k),
                ).fetchall()
            if not rows and revisits_only:
                # nothing to revisit now: the host waits for its next due revisit (one that is due
                # already comes in with the next promotion, within a second), never for FAR_FUTURE,
                # which a one-shot crawl would wait for forever
                (visit,) = self._db.execute(
                    "SELECT MIN(next_visit) FROM urls WHERE origin = ? AND state = 2", (origin,)
                ).fetchone()
                when = FAR_FUTURE if visit is None else max(float(visit), now + 1.0)
                self._db.execute(
                    "UPDATE hosts SET next_at = GREATEST(next_at, ?) WHERE origin = ?", (when, origin)
                )
                return []
            if not rows:
                wait = self._db.execute(
                    "SELECT MIN(not_before), COUNT(*) FROM urls WHERE origin = ? AND state = 0", (origin,)
                ).fetchone()
                self._db.execute(
                    "UPDATE hosts SET queued = ?, next_at = GREATEST(next_at, ?) WHERE origin = ?",
                    (wait[1], wait[0] or 0.0, origin),
                )
                return []
            self._db.executemany("UPDATE urls SET state = 1 WHERE id = ?", [(r[0],) for r in rows])
            self._db.execute(
                "UPDATE hosts SET queued = queued - ?, day_fetches = CASE WHEN day_start + 86400 > ?"
                " THEN day_fetches + ? ELSE ? END, day_start = CASE WHEN day_start + 86400 > ? THEN day_start"
                " ELSE ? END WHERE origin = ?",
                (len(rows), now, len(rows), len(rows), now, now, origin),
            )
        entries = [UrlEntry(r[0], r[1], origin, *r[2:]) for r in rows]
        revisits = sum(1 for e in entries if e.revisit)
        self.revisits_queued -= revisits
        self.counts[QUEUED] -= len(rows) - revisits
        self.counts[IN_FLIGHT] += len(rows)
        return entries

    def day_fetches(self, origin: str, now: float) -> tuple[int, float]:
        """Requests handed out for the origin in its current day, and when that day ends."""
        row = self._db.execute(
            "SELECT day_start, day_fetches FROM hosts WHERE origin = ?", (origin,)
        ).fetchone()
        if row is None or row[0] + 86400 <= now:
            return 0, now + 86400
        return int(row[1]), float(row[0]) + 86400

    def promote_due(self, now: float, limit: int, fetched_before: float | None = None) -> int:
        """Put up to ``limit`` stored URLs whose revisit time has come back in the queue (the most
        overdue first); return how many. ``fetched_before``: only those due by then and fetched
        before then (a one-shot run revisits what was due when it started, never what it fetched
        itself). Either way the query reads only rows it promotes, down the ``urls_revisit``
        index: rows it left out are not scanned again each second (173 ms at 500k rows)."""
        if limit <= 0:
            return 0
        due_by = now if fetched_before is None else min(now, fetched_before)
        with self._transaction():
            origins = self._db.execute(
                "UPDATE urls SET state = 0, not_before = 0, attempts = 0 WHERE id IN (SELECT id FROM urls"
                " WHERE state = 2 AND next_visit <= ? AND fetched_at < ? ORDER BY next_visit LIMIT ?)"
                " RETURNING origin",
                (due_by, due_by, limit),
            ).fetchall()
            per_origin: dict[str, int] = {}
            for (origin,) in origins:
                per_origin[origin] = per_origin.get(origin, 0) + 1
            for origin, k in per_origin.items():
                self._db.execute(
                    "UPDATE hosts SET queued = queued + ?,"
                    " next_at = CASE WHEN next_at >= ? THEN ? ELSE next_at END WHERE origin = ?",
                    (k, FAR_FUTURE, now, origin),
                )
        self.counts[STORED] -= len(origins)
        self.revisits_queued += len(origins)
        return len(origins)

    def due_after(self, seconds: float, now: float) -> int:
        """Make every stored URL fetched at least ``seconds`` ago due now; return how many were
        not due before (one pass over the stored rows: for the start of a one-shot crawl)."""
        return self._db.execute(
            "UPDATE urls SET next_visit = ? WHERE state = 2 AND next_visit > ? AND fetched_at <= ?",
            (now, now, now - seconds),
        ).rowcount

    def next_visit_at(self) -> float | None:
        """The earliest revisit time of a stored URL (None: nothing stored)."""
        row = self._db.execute("SELECT MIN(next_visit) FROM urls WHERE state = 2").fetchone()
        return None if row[0] is None else float(row[0])

    def defer_host(self, origin: str, until: float, reason: str, now: float, count: bool = True) -> None:
        """No request to the origin before ``until`` (robots.txt unavailable, daily budget spent);
        its queued URLs stay queued. ``count``: one more deferral in a row (the backoff grows),
        unless the origin is deferred already."""
        self._db.execute(
            "UPDATE hosts SET defer_count = defer_count"
            " + (CASE WHEN ? AND deferred_until <= ? THEN 1 ELSE 0 END), deferred_until = ?,"
            " next_at = GREATEST(next_at, ?), defer_reason = ? WHERE origin = ?",
            (count, now, until, until, reason, origin),
        )

    def deferred_until(self, origin: str) -> float:
        row = self._db.execute("SELECT deferred_until FROM hosts WHERE origin = ?", (origin,)).fetchone()
        return float(row[0]) if row else 0.0

    def mark_changed(self, changed: Iterable[tuple[str, float]], now: float) -> int:
        """Stored URLs that a sitemap or feed says changed (URL, unix time) after their last fetch
        become due now; return how many."""
        due = 0
        with self._transaction():
            for url, when in changed:
                due += self._db.execute(
                    "UPDATE urls SET next_visit = ? WHERE url = ? AND state = 2 AND fetched_at < ?"
                    " AND next_visit > ?",
                    (now, url, when, now),
                ).rowcount
        return due

    def defer_count(self, origin: str) -> int:
        row = self._db.execute("SELECT defer_count FROM hosts WHERE origin = ?", (origin,)).fetchone()
        return int(row[0]) if row else 0

    def undefer_host(self, origin: str) -> None:
        """The origin answered (its robots.txt came): its deferral backoff starts over."""
        self._db.execute(
            "UPDATE hosts SET defer_count = 0, defer_reason = NULL, deferred_until = 0"
            " WHERE origin = ? AND (defer_count > 0 OR deferred_until > 0)",
            (origin,),
        )

    def deferred(self, now: float, limit: int = 100) -> list[tuple[str, str, float, int]]:
        """Deferred origins with queued URLs: (origin, reason, retry time, URLs queued), soonest first."""
        rows = self._db.execute(
            "SELECT origin, COALESCE(defer_reason, ''), deferred_until, queued FROM hosts"
            " WHERE deferred_until > ? AND queued > 0 ORDER BY deferred_until LIMIT ?",
            (now, limit),
        )
        return [(str(r[0]), str(r[1]), float(r[2]), int(r[3])) for r in rows]

    def host_reports(self, limit: int = 100) -> list[HostReport]:
        """Per-origin counts for status: deferred hosts first, then the busiest."""
        rows = self._db.execute(
            "SELECT h.origin, h.fetched, h.stored, h.queued, h.errors, h.deferred_until, h.defer_reason,"
            " (SELECT MIN(next_visit) FROM urls u WHERE u.origin = h.origin AND u.state = 2)"
            " FROM hosts h ORDER BY h.deferred_until > ? DESC, h.fetched DESC, h.origin LIMIT ?",
            (time.time(), limit),
        )
        return [HostReport(*r) for r in rows]

    def set_next_at(self, origin: str, when: float) -> None:
        """The origin's next request not before ``when`` (nor before the end of a deferral)."""
        self._db.execute(
            "UPDATE hosts SET next_at = GREATEST(?, deferred_until) WHERE origin = ?", (when, origin)
        )

    def host_stored(self, origin: str) -> int:
        row = self._db.execute("SELECT stored FROM hosts WHERE origin = ?", (origin,)).fetchone()
        return int(row[0]) if row else 0

    def drop_host_queue(self, origin: str, reason: str) -> int:
        """Skip every queued new URL of the origin (its page limit is reached; its stored pages
        stay due for revisits); return how many."""
        with self._transaction():
            n = self._db.execute(
                "UPDATE urls SET state = ?, error = ? WHERE origin = ? AND state = 0 AND versions = 0",
                (SKIPPED, reason, origin),
            ).rowcount
            self._db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (n, origin))
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
        revisit: Revisit | None = None,
    ) -> int:
        """Record an in-flight URL's final state and queue its links, at most ``max_links`` new
        ones (0: no limit), in one transaction (a page's "stored" mark, its revisit schedule and
        its links are durable together); return how many links were queued. A STORED URL comes
        with its ``revisit`` (next visit, validators, body hash).

        A first body judged for new text (``revisit.fresh`` not None) counts for its URL shape as
        giving something when its text was new or it led to new URLs of other shapes (a list of
        articles reads the same each time, yet each gives new articles): see ``judge``."""
        judging = revisit is not None and revisit.fresh is not None and entry.pattern is not None
        other = 0
        with self._transaction():
            if not self._db.execute(
                "UPDATE urls SET state = ?, status = ?, error = ?, attempts = attempts + 1 WHERE id = ?"
                f" AND state = 1{self._OWNED}",
                (state, status or None, error or None, entry.id, *self._owner()),
            ).rowcount:
                return 0  # settled already (see _OWNED)
            if revisit is not None:
                r = revisit
                self._db.execute(
                    "UPDATE urls SET next_visit = ?, interval = ?, prev_interval = ?, fetched_at = ?,"
                    " etag = COALESCE(?, etag), last_modified = COALESCE(?, last_modified),"
                    " body_hash = COALESCE(?, body_hash), versions = versions + ?, attempts = 0,"
                    " fresh = COALESCE(fresh, ?) WHERE id = ?",
                    (r.next_visit, r.interval, r.prev_interval, r.fetched_at, r.etag, r.last_modified,
                     r.body_hash, int(r.new_version), None, entry.id),
                )  # fmt: skip
                if r.new_version and entry.revisit and entry.kind == PAGE:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('new_versions', '1') ON CONFLICT (key)"
                        " DO UPDATE SET value = CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)"
                    )
            failed = state == FAILED or (state == SKIPPED and not entry.revisit)
            self._db.execute(
                "UPDATE hosts SET fetched = fetched + 1, errors = errors + ?, stored = stored + ?"
                " WHERE origin = ?",
                (
                    int(failed),
                    int(state == STORED and not entry.revisit and entry.kind != SITEMAP),
                    entry.origin,
                ),
            )
            added, other, batch = self._add(links, max_links, entry.pattern)
        self._counted(batch)
        if judging:
            assert revisit is not None and revisit.fresh is not None
            self._judged(entry, revisit.fresh, other)
        self.counts[IN_FLIGHT] -= 1
        self.counts[state] += 1
        if revisit is not None and revisit.new_version and entry.revisit and entry.kind == PAGE:
            self.new_versions += 1
        if entry.kind == SITEMAP and (state == STORED) != entry.revisit:
            self.sitemaps_kept += 1 if state == STORED else -1
        return added

    def retry(
        self, entry: UrlEntry, not_before: float, status: int = 0, error: str = "", count_attempt: bool = True
    ) -> None:
        """Put an in-flight URL back in the queue, not to be fetched before ``not_before``;
        ``count_attempt`` False: the failure was ours (a full disk), not the URL's."""
        with self._transaction():
            if not self._db.execute(
                "UPDATE urls SET state = 0, attempts = attempts + ?, not_before = ?, status = ?, error = ?"
                f" WHERE id = ? AND state = 1{self._OWNED}",
                (int(count_attempt), not_before, status or None, error or None, entry.id, *self._owner()),
            ).rowcount:
                return
            self._db.execute(
                "UPDATE hosts SET queued = queued + 1, fetched = fetched + 1 WHERE origin = ?",
                (entry.origin,),
            )
        self._requeued(entry)

    def release(self, entry: UrlEntry) -> None:
        """Return an in-flight URL to the queue unchanged (the crawl stopped before its outcome,
        or its host was deferred)."""
        with self._transaction():
            if not self._db.execute(
                f"UPDATE urls SET state = 0 WHERE id = ? AND state = 1{self._OWNED}",
                (entry.id, *self._owner()),
            ).rowcount:
                return
            self._db.execute("UPDATE hosts SET queued = queued + 1 WHERE origin = ?", (entry.origin,))
        self._requeued(entry)

    def _requeued(self, entry: UrlEntry) -> None:
        self.counts[IN_FLIGHT] -= 1
        if entry.revisit:
            self.revisits_queued += 1
        else:
            self.counts[QUEUED] += 1

    # -- traps: what a URL shape's pages give ---------------------------------------------------

    def judge(self, origin: str, pattern: str | None, fresh: bool) -> int:
        """Count one page of the origin's URL shape as giving new text or not; when the shape's
        recent pages stopped giving any, it becomes a trap: its queued URLs are skipped and new
        ones dropped. Returns how many queued URLs were skipped (0: not a trap, or one already)."""
        if pattern is None or (origin, pattern) in self.trapped:
            return 0
        with self._transaction():
            window, n = self._push_verdict(origin, pattern, fresh)
            skipped = self._cut_if_trap(origin, pattern, window, n)
        return self._trapped_now(origin, pattern, skipped)

    def _push_verdict(self, origin: str, pattern: str, fresh: bool) -> tuple[int, int]:
        """Shift one verdict into the shape's window (inside a transaction); its window and count."""
        mask = (1 << TRAP_WINDOW) - 1
        window, n = self._db.execute(
            'INSERT INTO patterns (origin, pattern, n, "window") VALUES (?, ?, 1, ?)'
            " ON CONFLICT (origin, pattern) DO UPDATE SET n = patterns.n + 1,"
            ' "window" = ((patterns."window" << 1) | excluded."window") & ?'
            ' RETURNING "window", n',
            (origin, pattern, 0 if fresh else 1, mask),
        ).fetchone()
        return int(window), int(n)

    def _cut_if_trap(self, origin: str, pattern: str, window: int, n: int) -> int | None:
        """Mark the shape a trap and skip its queued URLs if its window says so (inside a
        transaction); how many were skipped, or None when it is no trap."""
        if n < TRAP_WINDOW or window.bit_count() < TRAP_DUPLICATES:
            return None
        self._db.execute(
            "UPDATE patterns SET trapped = 1 WHERE origin = ? AND pattern = ?", (origin, pattern)
        )
        skipped: int = self._db.execute(
            "UPDATE urls SET state = ?, error = ? WHERE origin = ? AND state = 0 AND versions = 0"
            " AND pattern = ?",
            (SKIPPED, "trap: its URL shape stopped giving new text", origin, pattern),
        ).rowcount
        self._db.execute("UPDATE hosts SET queued = queued - ? WHERE origin = ?", (skipped, origin))
        return skipped

    def _trapped_now(self, origin: str, pattern: str, skipped: int | None) -> int:
        """The in-memory side of ``_cut_if_trap``, once its transaction committed."""
        if skipped is None:
            return 0
        self.trapped.add((origin, pattern))
        self.counts[QUEUED] -= skipped
        self.counts[SKIPPED] += skipped
        log.info("trap: %s%s stopped giving new text; %d queued URLs skipped", origin, pattern, skipped)
        return skipped

    def _judged(self, entry: UrlEntry, text_fresh: bool, other_links: int) -> None:
        """Count a first body for its shape (after ``finish``); remember whether its text alone
        made it count, and where its verdict sits in the shape's window, so that ingest's verdict
        on that text can still overrule it (see ``ingest_verdicts``)."""
        assert entry.pattern is not None
        if (entry.origin, entry.pattern) in self.trapped:
            return
        with self._transaction():
            window, n = self._push_verdict(entry.origin, entry.pattern, text_fresh or other_links > 0)
            self._db.execute(
                "UPDATE urls SET fresh = ?, judged_n = ? WHERE id = ?",
                (int(text_fresh and not other_links), n, entry.id),
            )
            skipped = self._cut_if_trap(entry.origin, entry.pattern, window, n)
        self._trapped_now(entry.origin, entry.pattern, skipped)

    def ingest_verdicts(self, verdicts: Iterable[tuple[str, bool]], cursor: int, inc_rate: float) -> int:
        """Ingest's verdicts on crawled pages, (URL, gave new text), with the feedback cursor they
        come up to (stored in the same transaction: each verdict is applied once). A page ingest
        found to give no new text although its body was new to the crawler counts against its
        shape; a revisit's changed body that ingest found unchanged in text gets the interval of
        an unchanged page. Returns how many verdicts matched a URL."""
        matched = 0
        cut: list[tuple[str, str, int | None]] = []
        with self._transaction():
            for url, new_text in verdicts:
                row = self._db.execute(
                    "SELECT id, origin, pattern, versions, fresh, prev_interval, fetched_at, state, judged_n"
                    " FROM urls WHERE url = ?",
                    (url,),
                ).fetchone()
                if row is None:
                    continue
                matched += 1
                _id, origin, pattern, versions, fresh, prev, fetched_at, state, judged_n = row
                if new_text:
                    continue
                if versions > 1 and state == STORED and fetched_at is not None:
                    interval = prev * (1 + inc_rate)
                    self._db.execute(
                        "UPDATE urls SET interval = ?, next_visit = ? WHERE id = ?",
                        (interval, fetched_at + interval, _id),
                    )
                elif versions == 1 and fresh == 1 and pattern is not None:
                    self._db.execute("UPDATE urls SET fresh = 0 WHERE id = ?", (_id,))
                    if (origin, pattern) not in self.trapped:
                        cut.append((origin, pattern, self._overrule(origin, pattern, judged_n)))
            self._db.execute(
                "INSERT INTO meta VALUES ('feedback_cursor', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(cursor),),
            )
        for origin, pattern, skipped in cut:
            if (origin, pattern) not in self.trapped:
                self._trapped_now(origin, pattern, skipped)
        return matched

    def _overrule(self, origin: str, pattern: str, judged_n: int | None) -> int | None:
        """Ingest found no new text in a page whose verdict was "new text": set its bit in the
        shape's window (where ``judged_n`` says it is; a verdict already shifted out is gone, one
        from before positions were kept is pushed), then see whether the shape is a trap (inside
        a transaction; what ``_cut_if_trap`` returns)."""
        if judged_n is None:
            window, n = self._push_verdict(origin, pattern, fresh=False)
        else:
            row = self._db.execute(
                'UPDATE patterns SET "window" = "window" | (1 << (n - ?))'
                " WHERE origin = ? AND pattern = ?"
                ' AND n - ? < ? AND trapped = 0 RETURNING "window", n',
                (judged_n, origin, pattern, judged_n, TRAP_WINDOW),
            ).fetchone()
            if row is None:
                return None
            window, n = int(row[0]), int(row[1])
        return self._cut_if_trap(origin, pattern, window, n)

    def feedback_cursor(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'feedback_cursor'").fetchone()
        return int(row[0]) if row else 0

    # -- robots.txt, kept across restarts (RFC 9309 2.4: up to 24 hours) -------------------------

    def load_robots(self, origin: str) -> tuple[float, int, bytes] | None:
        """(fetch time, status, body) of the origin's last robots.txt, or None."""
        row = self._db.execute(
            "SELECT fetched_at, status, body FROM robots WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else (float(row[0]), int(row[1]), bytes(row[2]))

    def save_robots(self, origin: str, fetched_at: float, status: int, body: bytes) -> None:
        """Keep the origin's robots.txt (one over ROBOTS_STORED_MAX_BYTES is not kept: fetched again
        after a restart)."""
        if len(body) > ROBOTS_STORED_MAX_BYTES:
            self._db.execute("DELETE FROM robots WHERE origin = ?", (origin,))
            return
        self._db.execute(
            "INSERT INTO robots (origin, fetched_at, status, body) VALUES (?, ?, ?, ?) ON CONFLICT (origin)"
            " DO UPDATE SET fetched_at = excluded.fetched_at, status = excluded.status, body = excluded.body",
            (origin, fetched_at, status, body),
        )

    def prune_robots(self, fetched_before: float) -> int:
        """Delete robots.txt rows fetched before ``fetched_before`` (older than their lifetime:
        never reused); return how many."""
        return self._db.execute("DELETE FROM robots WHERE fetched_at < ?", (fetched_before,)).rowcount

    def note_drops(self, reason: str, n: int) -> None:
        """Count URLs the crawler dropped before they reached the frontier (``DROP_ROBOTS``)."""
        if n:
            _write_drops(self._db, {reason: n})
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def free_hosts(self) -> None:
        """Clear "slot full" marks (at the end of a run no request is in flight any more)."""
        self._db.execute("UPDATE hosts SET next_at = ? WHERE next_at >= ?", (time.time(), FAR_FUTURE))

    def state_of(self, url: str) -> tuple[str, int | None, str | None] | None:
        """(state name, HTTP status, error) of a URL, or None if never seen: for tests and tools."""
        row = self._db.execute("SELECT state, status, error FROM urls WHERE url = ?", (url,)).fetchone()
        return None if row is None else (STATE_NAMES[row[0]], row[1], row[2])


def _write_drops(db: Sql, dropped: dict[str, int]) -> None:
    for reason, n in dropped.items():
        if n:
            db.execute(
                "INSERT INTO drops VALUES (?, ?) ON CONFLICT (reason) DO UPDATE SET n = drops.n + excluded.n",
                (reason, n),
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

    def __init__(self, db: Sql) -> None:
        self._db = db
        self._base: dict[str, int] = {}
        self._stored: dict[str, int] = {}
        self.delta: dict[str, int] = {}
        self.total = 0  # the change to the whole queue
        self.new_hosts = 0  # hosts rows created
        self.grew: set[str] = set()  # origins that got a URL (their hosts row must exist)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._victims: dict[str | None, _Victim | None] = {}  # origin, or None for the whole queue
        self.listed_days: dict[str, tuple[float, int]] = {}  # origin -> (listing day's start, URLs)
        self._now = time.time()

    def listed(self, origin: str) -> int:
        """New URLs sitemaps and feeds queued for the origin in its current listing day (a day
        that has ended starts again now)."""
        if origin not in self.listed_days:
            row = self._db.execute(
                "SELECT listed_day_start, listed_day FROM hosts WHERE origin = ?", (origin,)
            ).fetchone()
            if row is None or row[0] + 86400 <= self._now:
                self.listed_days[origin] = (self._now, 0)
            else:
                self.listed_days[origin] = (float(row[0]), int(row[1]))
        return self.listed_days[origin][1]

    def list_one(self, origin: str) -> None:
        self.listed(origin)
        start, n = self.listed_days[origin]
        self.listed_days[origin] = (start, n + 1)

    def stored(self, origin: str) -> int:
        """The origin's pages stored (read once per batch: a batch stores none)."""
        if origin not in self._stored:
            row = self._db.execute("SELECT stored FROM hosts WHERE origin = ?", (origin,)).fetchone()
            self._stored[origin] = int(row[0]) if row else 0
        return self._stored[origin]

    def queued(self, origin: str) -> int:
        if origin not in self._base:
            row = self._db.execute("SELECT queued FROM hosts WHERE origin = ?", (origin,)).fetchone()
            self._base[origin] = int(row[0]) if row else 0
        return self._base[origin] + self.delta.get(origin, 0)

    def change(self, origin: str, n: int) -> None:
        self.queued(origin)
        self.delta[origin] = self.delta.get(origin, 0) + n
        self.total += n
        if n > 0:
            self.grew.add(origin)
        self._victims.pop(origin, None)  # the origin's queue changed, and so did the whole one
        self._victims.pop(None, None)

    def victim(self, origin: str | None) -> _Victim | None:
        """The victim of the origin's queue, or of the whole queue when ``origin`` is None."""
        if origin not in self._victims:
            if origin is None:
                row = self._db.execute(
                    "SELECT id, origin, depth FROM urls WHERE state = 0 AND versions = 0"
                    " ORDER BY depth DESC, id DESC LIMIT 1"
                ).fetchone()
            else:
                row = self._db.execute(
                    "SELECT id, origin, depth FROM urls WHERE origin = ? AND state = 0 AND versions = 0"
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
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()  # a failed COMMIT (a full disk) leaves the transaction open
                raise
        else:
            self._rollback()  # and the original error propagates

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (SQLITE_FULL among them): a ROLLBACK
        # then fails with "no transaction is active", which would hide the error that matters
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
