"""The crawl frontier on PostgreSQL, shared by the crawlers of several machines (issue 17).

The same tables and statements as the SQLite frontier (``frontier.py``), in the ``frontier``
schema of the database ``--database`` names, created and migrated here (``schema_versions``),
plus what a cluster needs:

- **Host leases.** A host is fetched by one machine at a time: ``claim`` locks the host's row
  (``SELECT ... FOR UPDATE SKIP LOCKED``: a host another machine is claiming right now is passed
  over, not waited for) and takes its lease (``lease_owner``, ``lease_until``) unless another
  machine holds it. The holder renews it while its requests to the host are in flight
  (``renew_leases``), and writes the host's ``next_at`` (its delay, Crawl-delay, Retry-After)
  to the shared row, so the politeness of one host holds across the cluster.
- **Dead machines.** A lease that ran out (its machine was killed, or lost the database for
  longer than the lease) is taken over: the host's in-flight URLs go back to the queue first.
  Each in-flight URL carries its ``claimed_by``, so a machine that comes back late settles only
  what is still its own (``_OWNED``).
- **Outages.** Reads raise :class:`DatabaseUnavailable` (the crawl loop backs off and reports
  it); outcomes (finish, retry, release, next_at, robots.txt, new URLs) that cannot be written
  are kept in order, at most ``MAX_UNSETTLED``, and written by ``settle_pending`` once the
  database answers again, so a restart of PostgreSQL loses no fetched page's outcome.
- **Counts.** Other machines change the tables: the in-memory counts are read again every
  ``COUNT_REFRESH_S``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..postgres import Database, DatabaseUnavailable
from ..sql_tables import Column, Table, columns
from ..statement_deadline import STATEMENT_TIMEOUT_S
from .frontier import DROPS, HOSTS, META, PATTERNS, ROBOTS, URLS, Frontier, NewUrl, UrlEntry
from .politeness import FAR_FUTURE

log = logging.getLogger("crystalline.crawler.frontier")

T = TypeVar("T")

LEASE_S = 30.0  # a host's lease: how long a dead machine's hosts wait before another takes them
COUNT_REFRESH_S = 5.0
REAP_EVERY_S = 1.0
MAX_UNSETTLED = 10_000  # outcomes kept while the database is away (a few per URL in flight)

# The tables as the last migration leaves them: the SQLite frontier's (``frontier.TABLES``) with
# what a cluster needs on top, host leases and the claimer of each in-flight URL.
_CLAIMED_BY = columns("claimed_by text")
_LEASE = columns("lease_owner text\nlease_until real NOT NULL DEFAULT 0")
_URLS = replace(URLS, columns=(*URLS.columns, *_CLAIMED_BY))
_HOSTS = replace(HOSTS, columns=(*HOSTS.columns, *_LEASE))
TABLES = (_URLS, _HOSTS, PATTERNS, DROPS, ROBOTS, META)


def _create(table: Table, last: str, cluster: tuple[Column, ...] = ()) -> str:
    """``CREATE TABLE`` of ``table``'s columns up to ``last``, then ``cluster``'s."""
    return replace(table, columns=(*table.upto(last), *cluster)).create("postgresql")


# Version 1, frozen: each table's columns up to the one named (a column added to a definition
# later comes with a migration of its own; tests/pkg/test_sql_tables.py checks both).
_SCHEMA_V1 = f"""
{_create(URLS, "judged_n", _CLAIMED_BY)};
CREATE INDEX urls_host_queue ON urls(origin, depth, id) WHERE state = 0;
CREATE INDEX urls_queue_depth ON urls(depth, id) WHERE state = 0;
CREATE INDEX urls_in_flight ON urls(origin) WHERE state = 1;
CREATE INDEX urls_revisit ON urls(next_visit) WHERE state = 2;
CREATE INDEX urls_host_revisit ON urls(origin, next_visit) WHERE state = 2;
CREATE INDEX urls_revisit_queue ON urls(origin, id) WHERE state = 0 AND versions > 0;
{_create(HOSTS, "errors", _LEASE)};
CREATE INDEX hosts_ready ON hosts(next_at) WHERE queued > 0;
CREATE INDEX hosts_leased ON hosts(lease_until) WHERE lease_owner IS NOT NULL;
{PATTERNS.create("postgresql", "trapped")};
{DROPS.create("postgresql", "n")};
{ROBOTS.create("postgresql", "body")};
CREATE INDEX robots_age ON robots(fetched_at);
{META.create("postgresql", "value")}
"""
MIGRATIONS = (_SCHEMA_V1,)


class PgFrontier(Frontier):
    """The frontier in the PostgreSQL database at ``url``; close it when done."""

    _OWNED = " AND claimed_by = ?"

    def __init__(
        self,
        url: str,
        *,
        lease_s: float = LEASE_S,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
        max_queued_per_host: int = 0,
        max_queued: int = 0,
        max_pages_per_host: int = 0,
        max_listed_per_host_per_day: int = 0,
    ) -> None:
        self._set_caps(max_queued_per_host, max_queued, max_pages_per_host, max_listed_per_host_per_day)
        self.lease_s = lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._unsettled: deque[Callable[[], object]] = deque()
        self._next_reap = 0.0
        self._next_count = 0.0
        self._feedback_from = -1  # the feedback cursor this machine read last (see ingest_verdicts)
        self._pg = Database(
            url, "frontier", name="crystalline-frontier", statement_timeout_s=statement_timeout_s
        )
        self._db = self._pg
        self.path = Path(self._pg.redacted())
        try:
            self._pg.migrate(MIGRATIONS)
            self._reap(time.time())
            self._load_counts()
        except BaseException:
            self._pg.close()
            raise

    def _owner(self) -> tuple[str, ...]:
        return (self.owner,)

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._pg.transaction()

    def close(self) -> None:
        """Give this machine's hosts back (its URLs still in flight to the queue) and disconnect;
        a database away at that moment keeps them until their leases run out."""
        if self._pg.closed:
            return
        with contextlib.suppress(DatabaseUnavailable), self._transaction():
            self._db.execute(
                "UPDATE hosts SET queued = queued + n.k, lease_owner = NULL FROM (SELECT origin,"
                " COUNT(*) AS k FROM urls WHERE state = 1 AND claimed_by = ? GROUP BY origin) n"
                " WHERE hosts.origin = n.origin",
                (self.owner,),
            )
            self._db.execute("UPDATE urls SET state = 0 WHERE state = 1 AND claimed_by = ?", (self.owner,))
            self._db.execute("UPDATE hosts SET lease_owner = NULL WHERE lease_owner = ?", (self.owner,))
        self._pg.close()

    def disk_bytes(self) -> int:
        """The frontier's tables and indexes on the server."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'frontier' AND c.relkind = 'r'"
        ).fetchone()
        return int(row[0])

    def backend(self) -> dict[str, object]:
        return {
            "kind": "postgresql",
            **self._pg.state(),
            "owner": self.owner,
            "unsettled": len(self._unsettled),
        }

    # -- leases ---------------------------------------------------------------------------------

    def _reap(self, now: float) -> int:
        """Take over hosts whose lease ran out: their in-flight URLs go back to the queue, the
        lease is dropped; returns how many URLs were put back."""
        back = 0
        with self._transaction():
            rows = self._db.execute(
                "SELECT origin FROM hosts WHERE lease_owner IS NOT NULL AND lease_owner <> ?"
                " AND lease_until < ? FOR UPDATE SKIP LOCKED",
                (self.owner, now),
            ).fetchall()
            for (origin,) in rows:
                back += self._take_over(origin)
                self._db.execute("UPDATE hosts SET lease_owner = NULL WHERE origin = ?", (origin,))
        if back:
            log.info("%d in-flight URLs of %d hosts whose lease ran out are queued again", back, len(rows))
        return back

    def _take_over(self, origin: str) -> int:
        """Put another machine's in-flight URLs of ``origin`` back in the queue and clear its
        "slot full" mark (inside a transaction that holds the host's row). Its last request
        started at least a lease ago (each claim renews the lease), so the host may be asked
        now unless deferred."""
        n: int = self._db.execute(
            "UPDATE urls SET state = 0, claimed_by = NULL WHERE origin = ? AND state = 1"
            " AND claimed_by IS DISTINCT FROM ?",
            (origin, self.owner),
        ).rowcount
        self._db.execute(
            "UPDATE hosts SET queued = queued + ?, next_at = GREATEST(LEAST(next_at, ?), deferred_until)"
            " WHERE origin = ?",
            (n, time.time(), origin),
        )
        return n

    def renew_leases(self, origins: Iterable[str], now: float) -> None:
        """Extend this machine's leases of ``origins`` (its requests to them are in flight)."""
        hosts = sorted(set(origins))
        if hosts:
            self._db.execute(
                "UPDATE hosts SET lease_until = ? WHERE lease_owner = ? AND origin = ANY(?)",
                (now + self.lease_s, self.owner, hosts),
            )

    def release_done_hosts(self) -> None:
        """Give back the leases of the hosts this machine holds that have nothing queued and
        none of its URLs in flight: a lease kept there guards nothing, and the other machines'
        one-shot crawls would wait for it to run out before ending. A host whose in-flight URL
        this machine no longer fetches (a claim whose reply the network lost) keeps its lease,
        so the others take it over when it runs out."""
        self._db.execute(
            "UPDATE hosts SET lease_owner = NULL WHERE lease_owner = ? AND queued = 0 AND NOT EXISTS"
            " (SELECT 1 FROM urls WHERE urls.origin = hosts.origin AND state = 1 AND claimed_by = ?)",
            (self.owner, self.owner),
        )

    def _sync(self, now: float) -> None:
        if now >= self._next_reap:
            self._next_reap = now + REAP_EVERY_S
            self._reap(now)
        if now >= self._next_count:
            self._next_count = now + COUNT_REFRESH_S
            self._load_counts()

    def ready_origins(self, now: float, limit: int) -> list[str]:
        """Origins with queued URLs whose next_at has come and that no other machine holds."""
        self._sync(now)
        rows = self._db.execute(
            "SELECT origin FROM hosts WHERE queued > 0 AND next_at <= ?"
            " AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?) ORDER BY next_at LIMIT ?",
            (now, self.owner, now, limit),
        )
        return [r[0] for r in rows]

    def next_ready_at(self) -> float | None:
        """When a host with queued URLs may be asked next by this machine (a host another holds:
        when its lease ends, its next_at being the holder's, "slot full" marks included); while
        other machines have requests in flight, or hold a lease that has not run out, and nothing
        is queued, in a second: their pages may queue more (a holder settles a page and queues
        its links in steps, and a holder killed mid-crawl leaves its hosts to whoever outlives
        its lease), so a one-shot crawl does not end while another machine may still add work.
        Hosts whose holder's lease ran out are taken over first: a dead holder's "slot full"
        mark (FAR_FUTURE) would otherwise read as "never again" and end the crawl."""
        now = time.time()
        self._reap(now)
        row = self._db.execute(
            "SELECT MIN(CASE WHEN lease_owner IS NOT NULL AND lease_owner <> ? AND lease_until >= ?"
            " THEN lease_until ELSE next_at END) FROM hosts"
            " WHERE queued > 0 AND deferred_until <= ?",
            (self.owner, now, now),
        ).fetchone()
        if row[0] is not None:
            return float(row[0])
        busy = (
            self._db.execute(
                "SELECT 1 FROM urls WHERE state = 1 AND claimed_by IS DISTINCT FROM ? LIMIT 1", (self.owner,)
            ).fetchone()
            or self._db.execute(
                "SELECT 1 FROM hosts WHERE lease_owner IS NOT NULL AND lease_owner <> ?"
                " AND lease_until >= ? LIMIT 1",
                (self.owner, now),
            ).fetchone()
        )
        return now + 1.0 if busy else None

    def claim(self, origin: str, n: int, now: float, max_new: int | None = None) -> list[UrlEntry]:
        """``Frontier.claim`` under the host's lease: nothing when another machine holds it or is
        claiming it right now; a lease that ran out is taken over first."""
        with self._transaction():
            host = self._db.execute(
                "SELECT lease_owner, lease_until FROM hosts WHERE origin = ? FOR UPDATE SKIP LOCKED",
                (origin,),
            ).fetchone()
            if host is None:
                return []
            owner, until = host
            if owner is not None and owner != self.owner:
                if until >= now:
                    return []
                self._take_over(origin)
            self._db.execute(
                "UPDATE hosts SET lease_owner = ?, lease_until = ? WHERE origin = ?",
                (self.owner, now + self.lease_s, origin),
            )
            entries = super().claim(origin, n, now, max_new)
            if entries:
                self._db.execute(
                    "UPDATE urls SET claimed_by = ? WHERE id = ANY(?)", (self.owner, [e.id for e in entries])
                )
        return entries

    def free_hosts(self) -> None:
        """Clear this machine's "slot full" marks and give its leases back (at the end of a run)."""
        self._db.execute(
            "UPDATE hosts SET next_at = CASE WHEN next_at >= ? THEN ? ELSE next_at END, lease_owner = NULL"
            " WHERE lease_owner = ?",
            (FAR_FUTURE, time.time(), self.owner),
        )

    # -- ingest's verdicts: applied by one machine ---------------------------------------------

    def feedback_cursor(self) -> int:
        self._feedback_from = super().feedback_cursor()
        return self._feedback_from

    def ingest_verdicts(self, verdicts: Iterable[tuple[str, bool]], cursor: int, inc_rate: float) -> int:
        """``Frontier.ingest_verdicts`` for the verdicts read from the cursor this machine last
        saw, under an advisory lock: when another machine applied them meanwhile (the stored
        cursor moved), nothing (each verdict counts once in the cluster too)."""
        with self._transaction():
            self._pg.lock("feedback")
            if super().feedback_cursor() != self._feedback_from:
                return 0
            matched = super().ingest_verdicts(verdicts, cursor, inc_rate)
        self._feedback_from = cursor
        return matched

    # -- outcomes that wait out an outage -------------------------------------------------------

    def settle_pending(self) -> None:
        """Write the outcomes kept while the database was away, in order (raises
        DatabaseUnavailable while it still is)."""
        while self._unsettled:
            self._unsettled[0]()
            self._unsettled.popleft()

    def _write(self, fn: Callable[[], T], default: T) -> T:
        """Run a write now, or keep it for ``settle_pending`` (after writes kept before it)."""
        if not self._unsettled:
            try:
                return fn()
            except DatabaseUnavailable:
                pass
        if len(self._unsettled) >= MAX_UNSETTLED:
            raise DatabaseUnavailable(
                f"{MAX_UNSETTLED} outcomes wait for the database ({self._pg.last_error})"
            )
        self._unsettled.append(fn)
        return default

    def finish(self, entry: UrlEntry, state: int, *args: Any, **kwargs: Any) -> int:
        """``Frontier.finish``, kept through an outage (its links read now)."""
        if "links" in kwargs:
            kwargs["links"] = list(kwargs["links"])
        elif len(args) >= 3:
            args = (*args[:2], list(args[2]), *args[3:])
        return self._write(functools.partial(super().finish, entry, state, *args, **kwargs), 0)

    def retry(
        self, entry: UrlEntry, not_before: float, status: int = 0, error: str = "", count_attempt: bool = True
    ) -> None:
        self._write(functools.partial(super().retry, entry, not_before, status, error, count_attempt), None)

    def release(self, entry: UrlEntry) -> None:
        self._write(functools.partial(super().release, entry), None)

    def set_next_at(self, origin: str, when: float) -> None:
        self._write(functools.partial(super().set_next_at, origin, when), None)

    def defer_host(self, origin: str, until: float, reason: str, now: float, count: bool = True) -> None:
        self._write(functools.partial(super().defer_host, origin, until, reason, now, count), None)

    def undefer_host(self, origin: str) -> None:
        self._write(functools.partial(super().undefer_host, origin), None)

    def save_robots(self, origin: str, fetched_at: float, status: int, body: bytes) -> None:
        self._write(functools.partial(super().save_robots, origin, fetched_at, status, body), None)

    def note_drops(self, reason: str, n: int) -> None:
        self._write(functools.partial(super().note_drops, reason, n), None)

    def add(self, urls: Iterable[NewUrl], max_new: int = 0) -> int:
        return self._write(functools.partial(super().add, list(urls), max_new), 0)

    def mark_changed(self, changed: Iterable[tuple[str, float]], now: float) -> int:
        return self._write(functools.partial(super().mark_changed, list(changed), now), 0)


def open_frontier(
    database: str | None,
    path: Path,
    lease_s: float = LEASE_S,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
    **caps: Any,
) -> Frontier:
    """The SQLite frontier at ``path``, or the PostgreSQL one when ``database`` is a URL (its
    statements cancelled after ``statement_timeout_s``)."""
    if database:
        return PgFrontier(database, lease_s=lease_s, statement_timeout_s=statement_timeout_s, **caps)
    return Frontier(path, **caps)
