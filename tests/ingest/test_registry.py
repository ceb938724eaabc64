"""The registry's lookups: the "same file seen again" fast path uses its index; failures
counted by kind of reason."""

from __future__ import annotations

from pathlib import Path

from crystalline.ingest.registry import Record, Registry, failure_class


def test_the_same_file_lookup_searches_the_file_key_index(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.record(
        [
            Record(
                f"drop:{i}", f"id{i}", f"/drop/{i}.txt", "drop", "failed", "empty", file_key=f"1:{i}:0:0:0"
            )
            for i in range(50)
        ]
        + [Record("spool:x", "idx", "https://example.org/", "crawl", "failed", "empty")]  # no file_key
    )
    statements: list[str] = []
    registry.db.set_trace_callback(statements.append)
    assert registry.find_file("1:7:0:0:0") == ("drop:7", "failed", "empty")
    assert registry.find_file("") is None  # rows without a file_key never match
    registry.db.set_trace_callback(None)
    for sql in statements:  # what find_file really ran, planned by SQLite
        plan = registry.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        assert not any(str(row[-1]).startswith("SCAN documents") for row in plan), (sql, plan)
        assert any("USING INDEX documents_file_key" in str(row[-1]) for row in plan), (sql, plan)
    registry.close()


def test_failures_are_counted_by_kind_of_reason(tmp_path: Path) -> None:
    reasons = [
        "too large (1200 bytes > 1000)",
        "too large (99999 bytes > 1000)",
        "extractor error (ValueError: bad xref)",
        "page 3 is unreadable (broken stream)",
        "page 12 is unreadable (other)",
        "binary data, not text",
    ]
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.record(
        [Record(f"drop:{i}", f"id{i}", f"/drop/{i}", "drop", "failed", r) for i, r in enumerate(reasons)]
        + [Record("drop:ok", "idok", "/drop/ok", "drop", "done", "")]
    )
    assert registry.counts_by_rule()["failed"] == {
        "too large": 2,
        "extractor error": 1,
        "page N is unreadable": 2,
        "binary data, not text": 1,
    }
    assert failure_class("encrypted PDF: a password is required") == "encrypted PDF"
    assert failure_class("") == "other"
    registry.close()
