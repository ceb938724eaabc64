"""The registry's lookups: the "same file seen again" fast path uses its index; failures
counted by kind of reason; records, exact and near duplicates, on SQLite and on PostgreSQL
(each test taking ``registry`` runs on both)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from _older_registry import migrated_from

from crystalline.ingest import minhash
from crystalline.ingest.dedup import simhash
from crystalline.ingest.registry import Record, Registry, failure_class
from crystalline.ingest.registry_pg import MIGRATIONS, PgRegistry
from crystalline.postgres import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "postgresql":
        opened: Registry = PgRegistry(request.getfixturevalue("pg_url"))
    else:
        opened = Registry(tmp_path / "registry.sqlite3")
    yield opened
    opened.close()


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


def test_failures_are_counted_by_kind_of_reason(registry: Registry) -> None:
    reasons = [
        "too large (1200 bytes > 1000)",
        "too large (99999 bytes > 1000)",
        "extractor error (ValueError: bad xref)",
        "page 3 is unreadable (broken stream)",
        "page 12 is unreadable (other)",
        "binary data, not text",
    ]
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


def _stored(entry: str, text: str) -> Record:
    keys, signature = minhash.fingerprint(text)
    from crystalline.ingest.dedup import content_hash

    return Record(entry, f"id-{entry}", f"https://h/{entry}", "crawl", "done",
                  content_hash=content_hash(text), simhash=simhash(text), tokens=len(text.split()),
                  split="train", shard=1, minhash=keys, minhash_signature=signature,
                  edits={"pii_email": 1})  # fmt: skip


def test_records_and_their_exact_and_near_duplicates(registry: Registry) -> None:
    text = " ".join(f"word{i % 97} term{i % 13} thing{i}" for i in range(400))
    near = text.replace("thing399", "other399")
    first = _stored("spool:a", text)
    registry.record([first, first])  # the same entry twice: recorded once
    dup = Record("spool:b", "id-b", "https://h/b", "crawl", "duplicate", "same text", rule="exact")
    registry.record([dup])
    assert registry.state_of("spool:a") == "done" and registry.reason_of("spool:b") == "same text"
    assert registry.exact_duplicate(first.content_hash) == "id-spool:a"
    assert registry.exact_duplicate("0" * 64) is None
    keys, signature = minhash.fingerprint(near)
    found = registry.minhash_duplicate(keys, signature)
    assert found is not None and found[0] == "id-spool:a" and found[1] >= minhash.THRESHOLD
    assert registry.near_duplicate(simhash(near)) == "id-spool:a"
    counts = registry.counts()
    assert (counts["done"], counts["duplicate"], counts["tokens"]) == (1, 1, 1200)
    assert registry.counts_by_rule()["pii"] == {"email": 1}
    assert registry.entries() == {"spool:a", "spool:b"}


def test_surprise_is_recorded_once_per_stored_document_and_summed_up_per_source(registry: Registry) -> None:
    a, b = _stored("spool:sa", "alpha beta gamma " * 40), _stored("spool:sb", "delta epsilon " * 60)
    a.group, b.group = "h.example", "licenses"
    failed = Record("spool:sc", "id-spool:sc", "https://h/c", "crawl", "failed", "too big", group="h.example")
    registry.record([a, b, failed])
    assert registry.surprise_known(["id-spool:sa", "id-spool:sb"]) == set()
    registry.record_surprise([("id-spool:sa", 2.5), ("id-spool:sc", 9.0)])
    registry.record_surprise([("id-spool:sa", 1.0), ("id-spool:sb", 4.0)])  # sa keeps its first value
    known = registry.surprise_known(["id-spool:sa", "id-spool:sb", "id-spool:sc"])
    assert known == {"id-spool:sa", "id-spool:sb"}  # a failed row has no surprise
    assert registry.surprise_by_source() == {"h.example": (1, 2.5), "licenses": (1, 4.0)}


def test_the_surprise_lookups_search_the_doc_id_index(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.record([_stored(f"spool:{i}", f"text number {i} " * 20) for i in range(50)])
    statements: list[str] = []
    registry.db.set_trace_callback(statements.append)
    assert registry.surprise_known(["id-spool:3", "id-spool:4"]) == set()
    registry.record_surprise([("id-spool:3", 1.5), ("id-spool:4", 2.5), ("id-spool:3", 9.0)])
    assert registry.surprise_known(["id-spool:3", "id-spool:4", "id-spool:5"]) == {"id-spool:3", "id-spool:4"}
    registry.db.set_trace_callback(None)
    lookups = [sql for sql in statements if "doc_id" in sql]
    assert len(lookups) >= 4, statements
    for sql in lookups:  # what the surprise calls really ran, planned by SQLite
        plan = registry.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        assert not any(str(row[-1]).startswith("SCAN documents") for row in plan), (sql, plan)
        assert any("USING INDEX documents_doc_id" in str(row[-1]) for row in plan), (sql, plan)
    assert registry.surprise_by_source()[""] == (2, 2.0)  # the repeated value kept its first one
    registry.close()


def test_a_schema_4_sqlite_registry_gains_the_doc_id_index(tmp_path: Path) -> None:
    def to_schema_4(db: sqlite3.Connection) -> None:  # no doc_id index
        db.execute("DROP INDEX documents_doc_id")
        db.execute(
            "INSERT INTO documents (entry, doc_id, source, origin, state, created) "
            "VALUES ('spool:old', 'id-old', 's', 'crawl', 'done', 0)"
        )

    with migrated_from(tmp_path / "registry.sqlite3", 4, to_schema_4) as registry:
        names = {r[0] for r in registry.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "documents_doc_id" in names
        registry.record_surprise([("id-old", 3.0)])
        assert registry.surprise_known(["id-old"]) == {"id-old"}


def test_a_version_2_postgresql_registry_gains_the_doc_id_index(pg_url: str) -> None:
    old = Database(pg_url, "registry")
    try:
        assert old.migrate(MIGRATIONS[:2]) == 2  # the schema before the doc_id index
        old.execute(
            "INSERT INTO documents (entry, doc_id, source, origin, state, created) "
            "VALUES ('spool:old', 'id-old', 's', 'crawl', 'done', 0)"
        )
    finally:
        old.close()
    registry = PgRegistry(pg_url)
    try:
        (version,) = registry.db.execute(
            "SELECT version FROM public.schema_versions WHERE component = 'registry'"
        ).fetchone()
        assert version == len(MIGRATIONS) == 3
        indexes = {
            str(r[0])
            for r in registry.db.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'registry' AND tablename = 'documents'"
            )
        }
        assert "documents_doc_id" in indexes
        registry.record_surprise([("id-old", 3.0), ("id-old", 5.0)])
        assert registry.surprise_known(["id-old", "id-new"]) == {"id-old"}
        assert registry.surprise_by_source() == {"": (1, 3.0)}
    finally:
        registry.close()
