"""A SQLite registry as an older schema left it, for the migration tests: made at today's schema,
then taken back (``undo`` drops what came later and inserts what the old one held), then opened
again, which migrates it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from crystalline.ingest.registry import SCHEMA_VERSION, Registry


@contextmanager
def migrated_from(
    path: Path, version: int, undo: Callable[[sqlite3.Connection], object]
) -> Iterator[Registry]:
    """The registry at ``path`` taken back to schema ``version`` by ``undo``, reopened: it is
    at SCHEMA_VERSION again (asserted) when it is yielded, and closed after."""
    Registry(path).close()
    db = sqlite3.connect(path)
    try:
        undo(db)
        db.execute(f"PRAGMA user_version = {int(version)}")
        db.commit()
    finally:
        db.close()
    registry = Registry(path)
    try:
        assert registry.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        yield registry
    finally:
        registry.close()
