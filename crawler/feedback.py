"""Ingest's verdicts on crawled pages, read back by the crawler (the trap guard and revisits).

Ingest records every submission in its registry (``ingest/registry.py``): ``done`` when its text
was new and stored, ``duplicate`` (exact or near) or ``filtered`` when it gave nothing to learn
from. The crawler reads those rows in order of their row id through its own read-only connection
(SQLite WAL: the reader never blocks the writer) and keeps its place in the frontier, in the same
transaction as what the verdicts change, so each verdict counts once, across restarts of either
side, with no queue between them to lose or bound.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from ..postgres import Database, DatabaseUnavailable
from ..statement_deadline import STATEMENT_TIMEOUT_S

log = logging.getLogger("crystalline.crawler.feedback")

# states that mean "no new text"; "failed" says nothing about the text and is not a verdict
_NO_NEW_TEXT = ("duplicate", "filtered")


class IngestFeedback:
    """Reads ingest's registry at ``path`` (which may not exist yet), or in the PostgreSQL
    ``database`` (``--database``: the registry every machine's ingest shares)."""

    def __init__(
        self, path: Path, database: str = "", statement_timeout_s: float = STATEMENT_TIMEOUT_S
    ) -> None:
        self.path = path
        self.database = database
        self.statement_timeout_s = statement_timeout_s
        self._db: sqlite3.Connection | None = None
        self._pg: Database | None = None

    def since(self, cursor: int, limit: int = 1000) -> tuple[list[tuple[str, bool]], int]:
        """Verdicts on crawled documents recorded after row ``cursor``: (URL, gave new text), and
        the cursor to ask from next time."""
        if self.database:
            return self._since_database(cursor, limit)
        db = self._connect()
        if db is None:
            return [], cursor
        try:
            rows = db.execute(
                "SELECT id, source, origin, state FROM documents WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit),
            ).fetchall()
        except sqlite3.Error as exc:  # locked for long, or not a registry: try again later
            log.warning("cannot read ingest's verdicts from %s: %s", self.path, exc)
            return [], cursor
        return _verdicts(rows, cursor)

    def _since_database(self, cursor: int, limit: int) -> tuple[list[tuple[str, bool]], int]:
        try:
            if self._pg is None:
                self._pg = Database(
                    self.database,
                    "registry",
                    max_size=1,
                    name="crystalline-feedback",
                    statement_timeout_s=self.statement_timeout_s,
                )
            exists = self._pg.execute("SELECT to_regclass('registry.documents') IS NOT NULL").fetchone()
            if not exists or not exists[0]:  # no ingest has migrated the registry yet
                return [], cursor
            rows = self._pg.execute(
                "SELECT id, source, origin, state FROM documents WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit),
            ).fetchall()
        except DatabaseUnavailable as exc:  # the crawl loop notices too: try again later
            log.warning("cannot read ingest's verdicts: %s", exc)
            return [], cursor
        return _verdicts(rows, cursor)

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.path.exists():
                return None
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=1.0, check_same_thread=False
            )
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._pg is not None:
            self._pg.close()
            self._pg = None


def _verdicts(rows: list[tuple[Any, ...]], cursor: int) -> tuple[list[tuple[str, bool]], int]:
    """(URL, gave new text) of the crawled documents among registry rows, and the next cursor."""
    verdicts = [
        (str(source), state == "done")
        for _id, source, origin, state in rows
        if origin == "crawl" and (state == "done" or state in _NO_NEW_TEXT)
    ]
    return verdicts, (int(rows[-1][0]) if rows else cursor)
