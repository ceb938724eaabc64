"""The registry's lookups: the "same file seen again" fast path uses its index."""

from __future__ import annotations

from pathlib import Path

from crystalline.ingest.registry import Record, Registry


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
