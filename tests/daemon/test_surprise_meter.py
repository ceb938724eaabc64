"""The surprise meter's registry boundary: any failure of the registry (not only the expected
OSError / sqlite3 / RuntimeError, e.g. a PostgreSQL error that is not DatabaseUnavailable) is
reported as the meter's error, logged once, and training goes on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crystalline.daemon.surprise import SurpriseMeter
from crystalline.ingest.registry import Registry
from crystalline.tokens.token_store import StoredDocument


class UndefinedColumn(Exception):
    """Stands for a psycopg error that is not mapped to DatabaseUnavailable."""


class BrokenRegistry(Registry):
    """A real SQLite registry whose surprise methods fail with an unexpected exception."""

    def surprise_known(self, doc_ids: list[str]) -> set[str]:
        raise UndefinedColumn('column "surprise" does not exist')

    def record_surprise(self, measured: list[tuple[str, float]]) -> None:
        raise UndefinedColumn('column "surprise" does not exist')


def test_an_unexpected_registry_error_is_reported_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "store").mkdir()
    meter = SurpriseMeter(tmp_path / "store", lambda: BrokenRegistry(tmp_path / "r.sqlite3"), 8, 1)
    caplog.set_level(logging.WARNING, logger="crystalline.control.surprise")
    meter.open()
    chunk = [StoredDocument(f"d{i}", f"spool:{i}", "s", 1, 10 * i, 10, "train") for i in range(3)]
    assert meter._known(chunk) == {"d0", "d1", "d2"}  # unreadable: none is scored (twice)
    meter.pending = [("d1", 1.5), ("d2", 2.5)]
    meter.flush()
    meter.flush()  # the same failure again: logged once
    assert meter.pending == [("d1", 1.5), ("d2", 2.5)]  # kept for the next try
    assert meter.stats()["written"] == 0  # the supervisor re-reads the counts only after a write
    error = meter.stats()["error"]
    assert isinstance(error, str) and "UndefinedColumn" in error and "does not exist" in error
    warnings = [r for r in caplog.records if "surprise not recorded" in r.getMessage()]
    assert len(warnings) == 1
    meter.close()


def test_written_counts_the_values_the_registry_took(tmp_path: Path) -> None:
    """``written`` in the meter's stats grows with each flush the registry takes: the supervisor
    reads ingest's counts (the mean surprise per source) again when it changes."""
    (tmp_path / "store").mkdir()
    meter = SurpriseMeter(tmp_path / "store", lambda: Registry(tmp_path / "r.sqlite3"), 8, 1)
    meter.pending = [("d1", 1.5), ("d2", 2.5)]
    meter.flush()
    assert meter.pending == [] and meter.stats()["written"] == 2 and "error" not in meter.stats()
    meter.close()
