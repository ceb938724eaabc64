"""MinHash LSH: near copies found at 10% word edits, distinct pages (also pages sharing 30% of
their 3-grams) not merged, candidates verified by their signatures, the index and the signatures
persistent across a restart of the ingestor and recovered from the shard index."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import _ingest_samples as samples
import pytest
from _older_registry import migrated_from

from crystalline.documents import Document, Spool
from crystalline.ingest import minhash
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.minhash import BANDS, bands_of, collision_probability, jaccard_estimate, signature
from crystalline.ingest.registry import Record, Registry
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.tokenizer import load_tokenizer


def edit(text: str, share: float, seed: int) -> str:
    """``text`` with ``share`` of its words replaced by other words."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * share)):
        words[i] = rng.choice(["lantern", "orchard", "copper", "meadow", "thunder", "pebble"])
    return " ".join(words)


def near_duplicate(a: str, b: str) -> bool:
    """The ingestor's verdict on two texts: a shared band, then the signatures' estimate."""
    sa, sb = signature(a), signature(b)
    banded = bool(set(enumerate(minhash.band_keys(sa))) & set(enumerate(minhash.band_keys(sb))))
    return banded and minhash.jaccard_estimate(sa, sb) >= minhash.THRESHOLD


def test_ten_percent_edits_are_found_and_distinct_pages_are_not() -> None:
    found = 0
    for seed in range(20):
        page = samples.prose(seed, 600)
        found += near_duplicate(page, edit(page, 0.10, seed))
    # bands: 1 - (1 - s**4)**28 = 0.96 at s = 0.57 (3-gram Jaccard at 10% edited); the estimate
    # (standard error 0.047) falls under the threshold 0.45 about once in 200
    assert found >= 17
    merged = sum(
        bool(
            set(enumerate(bands_of(samples.prose(a, 600))))
            & set(enumerate(bands_of(samples.prose(a + 100, 600))))
        )
        for a in range(20)
    )
    assert merged == 0


def test_pages_sharing_thirty_percent_are_candidates_but_not_merged() -> None:
    pairs = [samples.sharing_pages(seed, 15) for seed in range(40)]  # 3-gram Jaccard ~0.28
    candidates = sum(bool(set(enumerate(bands_of(a))) & set(enumerate(bands_of(b)))) for a, b in pairs)
    assert candidates >= 2  # what the bands alone merged (20% of such pairs in bench/near_dup.py)
    assert sum(near_duplicate(a, b) for a, b in pairs) == 0


def test_signature_estimates_jaccard_and_bands_follow_the_formula() -> None:
    page = samples.prose(7, 600)
    assert jaccard_estimate(signature(page), signature(page)) == 1.0
    assert jaccard_estimate(signature(page), signature(samples.prose(8, 600))) < 0.1
    copies = [jaccard_estimate(signature(page), signature(edit(page, 0.10, seed))) for seed in range(30)]
    # 3-gram Jaccard of a 10%-edited copy: 0.729 / 1.271 = 0.57; 30 estimates average to +-0.01
    assert sum(copies) / len(copies) == pytest.approx(0.57, abs=0.04)
    assert len(bands_of(page)) == BANDS
    assert len(minhash.pack(signature(page))) == minhash.SIGNATURE_BYTES == 448
    assert collision_probability(0.57) == pytest.approx(0.96, abs=0.01)


def ingest(data: Path, spool: Spool) -> dict:
    settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
    with Ingestor(settings, data, load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        return ing.stats()


def put(spool: Spool, name: str, text: str) -> None:
    spool.put(Document(f"https://example.org/{name}", text.encode(), "text/plain"))


# seed 24: two pages sharing 15 of 30 paragraphs (estimated Jaccard 0.31) that share two bands
PAGE, SIBLING = samples.sharing_pages(24, 15)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lose_registry", [False, True], ids=["restart", "recovered-from-shards"])
def test_signatures_survive_a_restart_and_verify_candidates(tmp_path: Path, lose_registry: bool) -> None:
    assert set(enumerate(bands_of(PAGE))) & set(enumerate(bands_of(SIBLING)))  # a candidate
    spool = Spool(tmp_path / "spool")
    put(spool, "original", PAGE)
    assert ingest(tmp_path / "data", spool)["documents"] == 1
    if lose_registry:  # a crash after the shard, before the registry: recover() rebuilds from it
        for path in (tmp_path / "data").glob("registry.sqlite3*"):
            path.unlink()
    put(spool, "copy", edit(PAGE, 0.10, 1))
    put(spool, "sibling", SIBLING)
    stats = ingest(tmp_path / "data", spool)
    assert (stats["documents"], stats["duplicates"]) == (2, 1)
    assert stats["duplicates_by_rule"] == {"minhash": 1}
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        states = dict(registry.db.execute("SELECT source, state FROM documents").fetchall())
        (reason,) = registry.db.execute("SELECT reason FROM documents WHERE state = 'duplicate'").fetchone()
        (bands,) = registry.db.execute("SELECT COUNT(*) FROM minhash_bands").fetchone()
        sizes = [n for (n,) in registry.db.execute("SELECT length(signature) FROM minhash_signatures")]
    finally:
        registry.close()
    assert (
        states["https://example.org/copy"] == "duplicate" and states["https://example.org/sibling"] == "done"
    )
    assert "MinHash, estimated Jaccard" in reason and bands == 2 * BANDS and sizes == [448, 448]


def test_schema_2_registry_is_migrated_and_unverifiable_bands_are_not_duplicates(tmp_path: Path) -> None:
    def to_schema_2(db: sqlite3.Connection) -> None:  # what a schema 2 registry held: bands, no signatures
        db.execute("DROP TABLE minhash_signatures")
        db.execute("UPDATE meta SET value = 'words3-bands28x4-seed1' WHERE key = 'minhash'")
        db.execute(
            "INSERT INTO documents (entry, doc_id, source, origin, state, content_hash, created) "
            "VALUES ('e', 'old', 's', 'crawl', 'done', 'h', 0)"
        )
        db.executemany(
            "INSERT INTO minhash_bands (band, value, doc) VALUES (?, ?, 1)", list(enumerate(bands_of(PAGE)))
        )

    with migrated_from(tmp_path / "registry.sqlite3", 2, to_schema_2) as registry:
        assert registry.db.execute("SELECT COUNT(*) FROM minhash_bands").fetchone()[0] == 0
        assert registry.minhash_duplicate(bands_of(PAGE), minhash.pack(signature(PAGE))) is None
        # a row recovered from a shard index without a signature gets no bands either
        registry.record(
            [Record("e2", "d2", "s2", "crawl", "done", content_hash="h2", minhash=bands_of(PAGE))]
        )
        assert registry.db.execute("SELECT COUNT(*) FROM minhash_bands").fetchone()[0] == 0
        sig = minhash.pack(signature(PAGE))
        registry.record(
            [
                Record(
                    "e3",
                    "d3",
                    "s3",
                    "crawl",
                    "done",
                    content_hash="h3",
                    minhash=bands_of(PAGE),
                    minhash_signature=sig,
                )
            ]
        )
        found = registry.minhash_duplicate(
            bands_of(edit(PAGE, 0.10, 2)), minhash.pack(signature(edit(PAGE, 0.10, 2)))
        )
        assert found is not None and found[0] == "d3" and found[1] >= minhash.THRESHOLD
        assert registry.minhash_duplicate(bands_of(SIBLING), minhash.pack(signature(SIBLING))) is None


@pytest.mark.timeout(120)
def test_filtered_documents_keep_their_rule_and_lines_are_counted(tmp_path: Path) -> None:
    settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
    spool = Spool(tmp_path / "spool")
    spool.put(
        Document(
            "https://example.org/lorem", (samples.prose(1) + " Lorem ipsum dolor.").encode(), "text/plain"
        )
    )
    spool.put(
        Document(
            "https://example.org/js", (samples.prose(2) + "\nEnable JavaScript.\n").encode(), "text/plain"
        )
    )
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        stats = ing.stats()
    assert (stats["documents"], stats["filtered"]) == (1, 1)
    assert stats["filtered_by_rule"] == {"c4_lorem_ipsum": 1}
    assert stats["lines_removed"] == {"c4_javascript": 1}
