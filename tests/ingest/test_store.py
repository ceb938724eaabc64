"""Token store shards and the registry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crystalline.ingest.dedup import hamming, simhash
from crystalline.ingest.normalize import QualityRules, normalize_text, quality_problem
from crystalline.ingest.registry import Record, Registry
from crystalline.tokens.token_store import PendingDocument, StoreReader, TokenStore


def pending(name: str, n: int, split: str = "train") -> PendingDocument:
    return PendingDocument(name, f"e:{name}", f"/src/{name}", split, np.arange(n, dtype=np.uint16))


def test_shard_round_trip_and_reader_sees_only_committed(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    placed = store.append([pending("a", 5), pending("b", 3, "val")])
    (tmp_path / "shard-000009.bin").write_bytes(b"\0" * 8)  # data without an index: not visible
    reader = StoreReader(tmp_path)
    assert reader.refresh() == 2
    assert [d.doc_id for d in reader.documents] == ["a", "b"] and placed[1].offset == 5
    assert reader.tokens(reader.documents[1]).tolist() == [0, 1, 2]
    assert reader.validation_tokens().tolist() == [0, 1, 2]


def test_writer_removes_uncommitted_data_and_continues_numbering(tmp_path: Path) -> None:
    TokenStore(tmp_path, np.uint16).append([pending("a", 2)])
    (tmp_path / "shard-000002.bin").write_bytes(b"\0" * 4)
    store = TokenStore(tmp_path, np.uint16)
    assert not (tmp_path / "shard-000002.bin").exists()
    assert store.append([pending("b", 2)])[0].shard == 2


def test_registry_counts_and_ignores_repeated_entries(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite3")
    reg.record([Record("e1", "d1", "s1", "crawl", "done", content_hash="h", simhash=5, tokens=10)])
    reg.record([Record("e1", "d1", "s1", "crawl", "failed", "again")])
    reg.record([Record("e2", "d2", "s2", "crawl", "failed", "broken")])
    counts = reg.counts()
    assert (counts["done"], counts["failed"], counts["tokens"]) == (1, 1, 10)
    assert reg.exact_duplicate("h") == "d1" and reg.near_duplicate(5 ^ 0b101) == "d1"
    assert reg.near_duplicate(5 ^ 0xFFFF) is None


def test_simhash_near_for_small_edit_far_for_other_text() -> None:
    base = " ".join(f"word{i}" for i in range(400))
    edited = base.replace("word200", "changed")
    other = " ".join(f"other{i}" for i in range(400))
    assert hamming(simhash(base), simhash(edited)) <= 3
    assert hamming(simhash(base), simhash(other)) > 10


def test_normalize_and_quality_filter() -> None:
    assert normalize_text("e\u0301  a\r\n\r\n\r\n\tb\x00 ") == "\u00e9 a\n\nb"
    rules = QualityRules(min_chars=10, min_words=3)
    assert quality_problem("short", rules) == "too short (5 chars < 10)"
    assert "letters" in (quality_problem("1234 5678 9012 3456", rules) or "")
    assert quality_problem("plain words of prose here", rules) is None


def test_reader_of_many_shards_keeps_few_files_open(tmp_path: Path) -> None:
    # one shard per ingest batch: a long-running daemon sees thousands of them
    store = TokenStore(tmp_path, np.uint16)
    for i in range(120):
        ids = np.full(5, i, dtype=np.uint16)
        store.append([PendingDocument(f"d{i}", f"e{i}", f"s{i}", "train", ids)])
    reader = StoreReader(tmp_path, max_open_shards=8)
    before = len(os.listdir("/proc/self/fd"))
    assert reader.refresh() == 120
    for doc in reader.documents:
        assert reader.tokens(doc).tolist() == [int(doc.doc_id[1:])] * 5
    assert len(os.listdir("/proc/self/fd")) - before <= 8


def test_validation_tokens_of_many_shards_keep_within_the_cap(tmp_path: Path) -> None:
    # the daemon's validation reader reads every held-out document at once; under `ulimit -n 64`
    # control ran out of descriptors there while views of every shard were alive
    store = TokenStore(tmp_path, np.uint16)
    for i in range(120):
        store.append([PendingDocument(f"v{i}", f"e{i}", f"s{i}", "val", np.full(3, i, dtype=np.uint16))])
    reader = StoreReader(tmp_path, max_open_shards=8)
    reader.refresh()
    fds = Path("/proc/self/fd")
    before = len(os.listdir(fds))
    tokens = reader.validation_tokens()
    assert tokens.tolist() == [i for i in range(120) for _ in range(3)]
    assert len(os.listdir(fds)) - before <= 8
    reader.max_open_shards = 2  # a cap lowered later (sized from the limit) closes the excess
    reader.tokens(reader.documents[0])  # not open now: opening it first makes room
    assert len(os.listdir(fds)) - before <= 2
