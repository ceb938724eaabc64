"""PostgreSQL for what several machines share: the crawl frontier and the document registry.

``--database postgresql://...`` puts both on one PostgreSQL server instead of the SQLite files
of the state directory (issue 17). This module is the one place that talks to psycopg: a
connection pool (psycopg_pool) with a deadline on every wait, statements written with SQLite's
``?`` placeholders (the backends share their SQL where the two dialects agree), transactions
bound to the calling thread, the schema's version table, and one error for "the database cannot
be reached now" (:class:`DatabaseUnavailable`), which callers back off on and report.

psycopg is an optional dependency (``pip install crystalline[postgres]``): nothing here imports
it until a database URL is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .exit_status import one_line
from .statement_deadline import STATEMENT_TIMEOUT_S, check_statement_timeout, client_deadline_s

SCHEMES = ("postgresql://", "postgres://")

# every wait has a deadline: connecting, a statement (an advisory lock included), a pool checkout
CONNECT_TIMEOUT_S = 5
# a statement: the server's statement_timeout and the client's deadline after it, a setting
# (statement_deadline.py); a reader's (``read_only``: the dashboard's) gives up sooner: they
# show, nobody waits
READER_STATEMENT_TIMEOUT_S = 2.0
# a checkout waits this long for a connection: while the server is away, each call of the crawl
# loop gives up this soon and the loop backs off (it must not block the daemon's event loop long)
POOL_TIMEOUT_S = 2.0


class Sql(Protocol):
    """What the frontier and the registry ask of a connection: sqlite3's, or :class:`Database`."""

    def execute(self, sql: str, params: Any = (), /) -> Any: ...

    def executemany(self, sql: str, seq: Any, /) -> Any: ...


class DatabaseUnavailable(OSError):
    """The database cannot be reached now (restarted, the network cut, connections refused):
    what was being done can be tried again later."""


def is_database_url(value: str) -> bool:
    return value.startswith(SCHEMES)


def check_database_url(value: str) -> str:
    """``value`` if it names a PostgreSQL database, else a one-line ValueError."""
    if not is_database_url(value):
        raise ValueError(f"--database {value!r}: expected a postgresql://user@host:port/name URL")
    return value


class Result:
    """A statement's rows, read before its connection went back to the pool (the subset of
    sqlite3's cursor the backends use: iteration, fetchone, fetchall, rowcount)."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


def _translate(sql: str, cache: dict[str, str]) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    out = cache.get(sql)
    if out is None:
        out = cache[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


class Database:
    """A pool of connections to one PostgreSQL database; close it when done.

    ``execute`` runs a statement on its own (autocommit) unless the calling thread is inside
    ``transaction()``, whose connection it then uses. Connection failures, a pool with no
    connection to give within POOL_TIMEOUT_S and statements cancelled by a server shutting down
    raise :class:`DatabaseUnavailable`; other errors propagate as psycopg raised them."""

    def __init__(
        self,
        url: str,
        schema: str,
        *,
        max_size: int = 4,
        name: str = "crystalline",
        read_only: bool = False,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
    ) -> None:
        """``schema``: where this component's tables live (the frontier's and the registry's
        share names such as ``meta``), first on every connection's search path.
        ``statement_timeout_s``: the server cancels a statement after this long, and the client
        gives up on its reply :func:`client_deadline_s` after it began. ``read_only``: every
        transaction is read-only (``default_transaction_read_only``) and a statement is cut off
        after READER_STATEMENT_TIMEOUT_S (or ``statement_timeout_s``, if shorter)."""
        try:
            import psycopg
            import psycopg_pool
        except ImportError as exc:
            raise RuntimeError(
                f"--database needs psycopg ({exc}): pip install 'crystalline[postgres]'"
            ) from exc
        self._psycopg = psycopg
        self._pool_errors = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)
        self.url = check_database_url(url)
        self.schema = schema
        self._local = threading.local()
        self._sql: dict[str, str] = {}
        self._check_connection = psycopg_pool.ConnectionPool.check_connection
        check_statement_timeout(statement_timeout_s)
        if read_only:
            statement_timeout_s = min(READER_STATEMENT_TIMEOUT_S, statement_timeout_s)
        self._watchdog = _Watchdog(client_deadline_s(statement_timeout_s))
        self.available = True  # the last statement reached the server
        self.last_error: str | None = None  # the last time it did not: why, and when
        self.last_error_at = 0.0
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=POOL_TIMEOUT_S,
            name=name,
            check=self._check,  # a server restart broke the pooled ones
            reconnect_timeout=POOL_TIMEOUT_S,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "application_name": name,
                "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}"
                f" -c search_path={schema},public"
                f" -c default_transaction_read_only={'on' if read_only else 'off'}",
                # a cut network is noticed in seconds, not after the kernel's two hours
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "tcp_user_timeout": 10_000,
            },
        )
        try:  # one connection first: its error says why (the pool's says only that it timed out)
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name=name).close()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to {self.redacted()}: {_first_line(exc)}") from exc
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except self._pool_errors as exc:
            self._pool.close(timeout=1.0)
            raise DatabaseUnavailable(f"cannot connect to {self.redacted()}: {exc}") from exc

    def redacted(self) -> str:
        """The URL without its password (for logs and errors)."""
        head, sep, tail = self.url.partition("@")
        if not sep:
            return self.url
        scheme, _, user = head.partition("://")
        return f"{scheme}://{user.split(':', 1)[0]}@{tail}"

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._pool_errors as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> DatabaseUnavailable:
        """``exc`` as DatabaseUnavailable, remembered for :meth:`state`."""
        error = DatabaseUnavailable(f"database {self.redacted()}: {exc}")
        self.available = False
        self.last_error, self.last_error_at = str(error), time.time()
        return error

    def state(self) -> dict[str, object]:
        """For status: the database (no password), whether it answered last, its last error."""
        return {
            "database": self.redacted(),
            "available": self.available,
            "last_error": self.last_error,
            "last_error_at": round(self.last_error_at, 1) if self.last_error else None,
        }

    def _check(self, conn: Any) -> None:
        with self._watchdog.guard(conn):
            self._check_connection(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._connection() as conn:
            try:
                with self._watchdog.guard(conn):
                    cur = conn.execute(_translate(sql, self._sql), params)
                    rows = cur.fetchall() if cur.description is not None else []
                self.available = True
                return Result(rows, cur.rowcount)
            except self._pool_errors as exc:
                raise self._unavailable(exc) from exc

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        if not seq:
            return
        with self._connection() as conn:
            try:
                with conn.cursor() as cur, self._watchdog.guard(conn):
                    cur.executemany(_translate(sql, self._sql), seq)
            except self._pool_errors as exc:
                raise self._unavailable(exc) from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction on one connection for the calling thread (nested: the outer one)."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        try:
            with self._pool.connection() as conn:
                self._local.conn = conn
                try:
                    tx = conn.transaction()
                    with self._watchdog.guard(conn):
                        tx.__enter__()  # BEGIN
                    try:
                        yield
                    except BaseException as exc:
                        with self._watchdog.guard(conn):
                            tx.__exit__(type(exc), exc, exc.__traceback__)  # ROLLBACK
                        raise
                    with self._watchdog.guard(conn):
                        tx.__exit__(None, None, None)  # COMMIT
                finally:
                    self._local.conn = None
        except self._pool_errors as exc:
            raise self._unavailable(exc) from exc

    def lock(self, name: str) -> None:
        """Hold a transaction-scoped advisory lock on ``name`` (inside ``transaction()``): one
        holder across every machine until the transaction ends."""
        self.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(name),))

    def migrate(self, steps: Sequence[str]) -> int:
        """Bring this schema to version len(steps), running the steps it lacks in one transaction
        under an advisory lock (two daemons starting together migrate once); returns the
        version. A newer schema than this program knows is an error."""
        component = self.schema
        with self.transaction():
            self.lock("migrate")
            self.execute(
                "CREATE TABLE IF NOT EXISTS public.schema_versions"
                " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {component}")
            have = self.version(len(steps))
            for step in steps[have:]:
                for statement in step.split(";"):
                    if statement.strip():
                        self.execute(statement)
            self.execute(
                "INSERT INTO public.schema_versions VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, len(steps)),
            )
        return len(steps)

    def version(self, known: int) -> int:
        """This schema's version (0: never migrated); one newer than ``known`` (this program's)
        is an error."""
        if not self.execute("SELECT to_regclass('public.schema_versions') IS NOT NULL").fetchall()[0][0]:
            return 0
        row = self.execute(
            "SELECT version FROM public.schema_versions WHERE component = ?", (self.schema,)
        ).fetchone()
        have = int(row[0]) if row else 0
        if have > known:
            raise RuntimeError(
                f"{self.redacted()}: {self.schema} schema version {have} is newer than this program's "
                f"{known}: upgrade crystalline"
            )
        return have

    @property
    def closed(self) -> bool:
        return bool(self._pool.closed)

    def close(self) -> None:
        self._pool.close(timeout=5.0)
        self._watchdog.stop()


class _Watchdog:
    """Cuts off a connection whose statement overran ``deadline_s``: its socket is shut down, so
    the blocked read returns and psycopg raises (one thread, started at the first guard)."""

    def __init__(self, deadline_s: float) -> None:
        self._deadline_s = deadline_s
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, conn: Any) -> Iterator[None]:
        key = id(conn)
        with self._lock:
            outer = self._deadlines.get(key)
            self._deadlines[key] = (time.monotonic() + self._deadline_s, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="postgres-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                if outer is None:
                    self._deadlines.pop(key, None)
                else:
                    self._deadlines[key] = outer

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                late = [conn for deadline, conn in self._deadlines.values() if deadline < now]
            for conn in late:
                with contextlib.suppress(OSError, ValueError):
                    dup = socket.socket(fileno=os.dup(conn.fileno()))
                    try:
                        dup.shutdown(socket.SHUT_RDWR)
                    finally:
                        dup.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def _first_line(exc: Exception) -> str:
    """The first line of a libpq error ("connection failed: ... Connection refused"; its hints
    follow on lines of their own)."""
    text = str(exc).strip()
    return one_line(text.splitlines()[0]) if text else type(exc).__name__


def _lock_key(name: str) -> int:
    """A name as a signed 64-bit advisory lock key."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
